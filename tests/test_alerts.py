"""Unit tests of the alerts (`promtool test rules`): for every alert, a cluster where it must fire and one where
it must stay silent. The clusters are made of what the processes really export: each decoder and encoder pod
starts from its role's start-up exposition (metrics.serve in a subprocess, read over HTTP), with the labels
the prometheus-operator PodMonitor gives a target; each scenario then changes only the series its story needs.
A rule that counts the wrong processes, matches a label value no process exports, or divides by series that
every role exports is caught here, before it is caught by an incident."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from maskserve.service import metrics

K8S = Path(__file__).resolve().parent.parent / "k8s"
PROMTOOL = shutil.which("promtool")
NAMESPACE = "maskserve"
MINUTES = 90  # samples per series, one a minute

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus; `make test` does it)")

_EXPOSITION = textwrap.dedent("""
    import socket, sys, urllib.request
    from maskserve.service import metrics
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    metrics.serve(port, sys.argv[1], "127.0.0.1")
    sys.stdout.write(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
""")


@functools.cache
def startup_exposition(role: str) -> str:
    """What a process of this role exports before its first request or job (its own registry: a subprocess)."""
    out = subprocess.run([sys.executable, "-c", _EXPOSITION, role], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def startup_samples(role: str) -> list[tuple[str, dict, float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(startup_exposition(role)) for s in family.samples]


def rules() -> dict:
    (rule,) = [d for d in yaml.safe_load_all((K8S / "base" / "monitoring.yaml").read_text())
               if d and d["kind"] == "PrometheusRule"]
    return {"groups": rule["spec"]["groups"]}


def alert_rules() -> dict[str, dict]:
    return {r["alert"]: r for g in rules()["groups"] for r in g["rules"] if "alert" in r}


def series_key(name: str, labels: dict) -> str:
    return name + "{" + ",".join(f'{k}={json.dumps(str(v))}' for k, v in sorted(labels.items())) + "}"


def le(bound: float) -> str:
    from prometheus_client.utils import floatToGoString

    return floatToGoString(bound)


class Cluster:
    """Pods scraped through the PodMonitor: decoders and encoders from their start-up exposition, and the two
    Redis pods' exporters. Values are promtool's expanding notation, one sample a minute."""

    def __init__(self, decoders: int = 2, encoders: int = 2):
        self.series: dict[str, str] = {}
        self.pods = {"decoder": [f"maskserve-decoder-5f7d9c8b4-{i}x2kq" for i in range(decoders)],
                     "encoder": [f"maskserve-encoder-6c4f8d7b9-{i}m7zt" for i in range(encoders)]}
        ports = {"decoder": 9090, "encoder": 9091}
        self.targets: dict[str, dict] = {}
        for n, (role, pods) in enumerate(self.pods.items()):
            for i, pod in enumerate(pods):
                self.targets[pod] = self._target(pod, role, f"10.0.{n}.{i + 10}:{ports[role]}")
                for name, labels, value in startup_samples(role):
                    self.set(pod, name, labels, f"{value}+0x{MINUTES}")
        for pod, maxmemory in (("maskserve-redis-cache-7b9f6d5c8-q2w4e", 3 << 30), ("maskserve-redis-queue-0", 1 << 30)):
            self.targets[pod] = self._target(pod, "exporter", f"10.0.9.{len(self.targets)}:9121")
            self.set(pod, "redis_up", {}, f"1+0x{MINUTES}")
            self.set(pod, "redis_memory_max_bytes", {}, f"{maxmemory}+0x{MINUTES}")
            self.set(pod, "redis_memory_used_bytes", {}, f"{2 << 20}+0x{MINUTES}")

    @staticmethod
    def _target(pod: str, container: str, instance: str) -> dict:
        return {"namespace": NAMESPACE, "pod": pod, "container": container, "endpoint": "metrics",
                "instance": instance, "job": f"{NAMESPACE}/maskserve"}

    def pod(self, role: str, i: int = 0) -> str:
        return self.pods[role][i] if role in self.pods else [p for p in self.targets if p.startswith(role)][0]

    def set(self, pod: str, name: str, labels: dict, values: str) -> None:
        self.series[series_key(name, {**labels, **self.targets[pod]})] = values

    def labels_of(self, pod: str, name: str, labels: dict) -> dict:
        return {"__name__": name, **labels, **self.targets[pod]}

    def requests(self, pod: str, rpc: str, code: str, per_minute: float, tenant: str = "acme") -> None:
        labels = {k: v for k, v in {"rpc": rpc, "code": code, "tenant": tenant}.items()
                  if k in metrics.REQUESTS._labelnames}
        self.set(pod, "maskserve_requests_total", labels, f"0+{per_minute}x{MINUTES}")

    def latency(self, pod: str, rpc: str, seconds: float, per_minute: float) -> None:
        """Every request of `rpc` on this pod takes `seconds`: the histogram the decoder exports for it."""
        for bound in (*metrics.LATENCY_BUCKETS, float("inf")):
            rate = per_minute if seconds <= bound else 0
            self.set(pod, "maskserve_request_duration_seconds_bucket", {"rpc": rpc, "le": le(bound)},
                     f"0+{rate}x{MINUTES}")
        self.set(pod, "maskserve_request_duration_seconds_count", {"rpc": rpc}, f"0+{per_minute}x{MINUTES}")
        self.set(pod, "maskserve_request_duration_seconds_sum", {"rpc": rpc}, f"0+{per_minute * seconds}x{MINUTES}")

    def encoding(self, pod: str, busy: float, runs_per_minute: int = 60) -> None:
        """This encoder spends `busy` of its wall time in engine runs (one `encode` observation per run)."""
        self.set(pod, "maskserve_stage_duration_seconds_sum", {"stage": "encode"}, f"0+{60 * busy}x{MINUTES}")
        self.set(pod, "maskserve_stage_duration_seconds_count", {"stage": "encode"}, f"0+{runs_per_minute}x{MINUTES}")

    def input_series(self) -> list[dict]:
        for key in self.series:  # every scenario's series must be one a process could export
            name = key.split("{")[0]
            assert name.startswith(("maskserve_", "redis_", "process_", "python_")), key
        return [{"series": k, "values": v} for k, v in self.series.items()]


# --- the scenarios: (cluster, evaluation time, labels of the expected alerts beyond the rule's own) -----------

def segment_prompt_slow():
    c = Cluster()
    for pod in c.pods["decoder"]:
        c.latency(pod, "SegmentPrompt", 0.4, 600)
    return c, "40m", [{}]


def segment_prompt_fast_other_rpcs_slow():
    c = Cluster()
    for pod in c.pods["decoder"]:
        c.latency(pod, "SegmentPrompt", 0.04, 600)
        c.latency(pod, "EncodeImage", 3.0, 60)  # waits for the encoder pool: not this SLO
    return c, "40m", []


def server_errors():
    c = Cluster()
    for pod in c.pods["decoder"]:
        c.requests(pod, "SegmentPrompt", "OK", 600)
        c.requests(pod, "SegmentPrompt", "UNAVAILABLE", 15)  # 2.4 %
    return c, "30m", [{}]


def client_errors_only():
    c = Cluster()
    for pod in c.pods["decoder"]:
        c.requests(pod, "SegmentPrompt", "OK", 600)
        c.requests(pod, "SegmentPrompt", "UNAVAILABLE", 3)  # 0.4 %: under the threshold
        for code in ("INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED", "PERMISSION_DENIED"):
            c.requests(pod, "SegmentPrompt", code, 60, tenant="careless")
    return c, "30m", []


def tenants_held_to_their_quotas():
    """A flooding tenant refused for its rate and streams: its RESOURCE_EXHAUSTED are not the service's errors."""
    c = Cluster()
    for pod in c.pods["decoder"]:
        c.requests(pod, "SegmentPrompt", "OK", 600)
        c.requests(pod, "SegmentPrompt", "RESOURCE_EXHAUSTED", 120, tenant="flood")
        c.set(pod, "maskserve_rejected_requests_total", {"tenant": "flood", "reason": "rate"}, f"0+100x{MINUTES}")
        c.set(pod, "maskserve_rejected_requests_total", {"tenant": "flood", "reason": "streams"}, f"0+20x{MINUTES}")
    return c, "30m", []


def encode_queue_full():
    """RESOURCE_EXHAUSTED for a full encode queue (no quota behind it) is the service falling behind."""
    c = Cluster()
    for pod in c.pods["decoder"]:
        c.requests(pod, "EncodeImage", "OK", 600)
        c.requests(pod, "EncodeImage", "RESOURCE_EXHAUSTED", 30)
        c.set(pod, "maskserve_rejected_requests_total", {"tenant": "acme", "reason": "unauthenticated"},
              f"0+30x{MINUTES}")  # refusals of another kind do not offset it
    return c, "30m", [{}]


def queue_growing():
    c = Cluster()
    for pod in c.pods["encoder"]:  # every encoder reports the stream's length; decoders export 0
        c.set(pod, "maskserve_queue_depth", {}, f"60+5x{MINUTES}")
    return c, "40m", [{}]


def queue_draining():
    c = Cluster()
    for pod in c.pods["encoder"]:
        c.set(pod, "maskserve_queue_depth", {}, f"400-4x{MINUTES}")
    return c, "40m", []


def encoders_saturated():
    c = Cluster(decoders=4, encoders=2)  # decoders export the encoder histograms too (at zero)
    for pod in c.pods["encoder"]:
        c.encoding(pod, 0.95)
    return c, "40m", [{"namespace": NAMESPACE}]


def encoders_busy_but_not_saturated():
    c = Cluster(decoders=1, encoders=2)
    c.encoding(c.pod("encoder", 0), 0.95)
    c.encoding(c.pod("encoder", 1), 0.5)
    return c, "40m", []


def a_dead_letter():
    c = Cluster()
    pod = c.pod("encoder", 1)
    c.set(pod, "maskserve_encoder_jobs_total", {"outcome": "done"}, f"0+30x{MINUTES}")
    c.set(pod, "maskserve_encoder_jobs_total", {"outcome": "dead_letter"}, f"0x20 1+0x{MINUTES - 21}")
    return c, "30m", [c.labels_of(pod, "maskserve_encoder_jobs_total", {"outcome": "dead_letter"})]


def jobs_done_and_a_new_encoder():
    c = Cluster()
    for pod in c.pods["encoder"]:
        c.set(pod, "maskserve_encoder_jobs_total", {"outcome": "done"}, f"0+30x{MINUTES}")
    late = "maskserve-encoder-6c4f8d7b9-late1"  # a replacement worker appears: its series start at zero
    c.targets[late] = c._target(late, "encoder", "10.0.1.99:9091")
    for outcome in ("done", "dead_letter"):
        c.set(late, "maskserve_encoder_jobs_total", {"outcome": outcome}, f"_x20 0+0x{MINUTES - 21}")
    return c, "30m", []


def queue_redis_nearly_full():
    c = Cluster()
    c.set(c.pod("maskserve-redis-queue"), "redis_memory_used_bytes", {}, f"{int(0.85 * (1 << 30))}+0x{MINUTES}")
    return c, "20m", [{"pod": "maskserve-redis-queue-0"}]


def cache_redis_full_by_design():
    c = Cluster()
    c.set(c.pod("maskserve-redis-cache"), "redis_memory_used_bytes", {}, f"{int(0.99 * (3 << 30))}+0x{MINUTES}")
    c.set(c.pod("maskserve-redis-queue"), "redis_memory_used_bytes", {}, f"{int(0.5 * (1 << 30))}+0x{MINUTES}")
    return c, "20m", []


def redis_unreachable():
    c = Cluster()
    c.set(c.pod("decoder", 0), "maskserve_redis_errors_total", {}, f"0+12x{MINUTES}")  # 0.2 / s
    return c, "20m", [{}]


def a_rare_redis_error():
    c = Cluster()
    c.set(c.pod("encoder", 0), "maskserve_redis_errors_total", {}, f"0+1x{MINUTES}")
    return c, "20m", []


SCENARIOS = {
    "MaskserveSegmentPromptLatencyHigh": {"fire": segment_prompt_slow, "silent": segment_prompt_fast_other_rpcs_slow},
    "MaskserveErrorRatioHigh": {"fire": server_errors, "silent": client_errors_only},
    "MaskserveQueueLagGrowing": {"fire": queue_growing, "silent": queue_draining},
    "MaskserveEncoderSaturated": {"fire": encoders_saturated, "silent": encoders_busy_but_not_saturated},
    "MaskserveDeadLetters": {"fire": a_dead_letter, "silent": jobs_done_and_a_new_encoder},
    "MaskserveRedisMemoryHigh": {"fire": queue_redis_nearly_full, "silent": cache_redis_full_by_design},
    "MaskserveRedisUnavailable": {"fire": redis_unreachable, "silent": a_rare_redis_error},
}


def promtool(tmp_path: Path, tests: list[dict], rule_groups: dict | None = None) -> subprocess.CompletedProcess:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups or rules(), sort_keys=False))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}, sort_keys=False))
    return subprocess.run([PROMTOOL, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)


def alert_test(alert: str, scenario) -> dict:
    cluster, eval_time, expected = scenario()
    rule = alert_rules()[alert]
    return {"name": f"{alert}: {scenario.__name__}", "interval": "1m", "input_series": cluster.input_series(),
            "alert_rule_test": [{"eval_time": eval_time, "alertname": alert, "exp_alerts": [
                {"exp_labels": {**rule.get("labels", {}), **{k: v for k, v in e.items() if k != "__name__"}},
                 "exp_annotations": rule.get("annotations", {})} for e in expected]}]}


def test_rules_are_valid_promql(tmp_path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules(), sort_keys=False))
    out = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_silent_scenario():
    assert set(alert_rules()) == set(SCENARIOS)
    assert all(set(s) == {"fire", "silent"} for s in SCENARIOS.values())


def test_startup_expositions_are_what_the_rules_rely_on():
    """The facts the rules are written against: only encoders export stage="encode", every role exports the
    unlabelled encoder histogram (so it cannot tell encoders from decoders)."""
    by_role = {role: {series_key(n, l) for n, l, _ in startup_samples(role)} for role in ("encoder", "decoder")}
    encode = series_key("maskserve_stage_duration_seconds_count", {"stage": "encode"})
    assert encode in by_role["encoder"] and encode not in by_role["decoder"]
    assert all("maskserve_encoder_batch_size_count{}" in s for s in by_role.values())
    assert series_key("maskserve_encoder_jobs_total", {"outcome": "dead_letter"}) in by_role["encoder"]


@pytest.mark.parametrize("alert,case", [(a, c) for a in SCENARIOS for c in ("fire", "silent")])
def test_alert(tmp_path, alert, case):
    out = promtool(tmp_path, [alert_test(alert, SCENARIOS[alert][case])])
    assert out.returncode == 0, out.stdout + out.stderr


# More cases where an alert's meaning turns on a distinction the plain pair does not exercise.
MORE_SCENARIOS = [("MaskserveErrorRatioHigh", encode_queue_full),
                  ("MaskserveErrorRatioHigh", tenants_held_to_their_quotas)]


@pytest.mark.parametrize("alert,scenario", MORE_SCENARIOS, ids=[s.__name__ for _, s in MORE_SCENARIOS])
def test_alert_more(tmp_path, alert, scenario):
    out = promtool(tmp_path, [alert_test(alert, scenario)])
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_quiet_cluster_raises_no_alert(tmp_path):
    cluster = Cluster()
    out = promtool(tmp_path, [{"name": "quiet", "interval": "1m", "input_series": cluster.input_series(),
                               "alert_rule_test": [{"eval_time": "60m", "alertname": a, "exp_alerts": []}
                                                   for a in alert_rules()]}])
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_scenarios_catch_a_rule_that_counts_decoders_as_encoders(tmp_path):
    """The rule as it was: busy time over a count of pods exporting the encoder batch histogram, which every
    process does (at zero), so with decoders running it cannot reach 0.9. The firing scenario catches it."""
    groups = rules()
    for g in groups["groups"]:
        for r in g["rules"]:
            if r.get("alert") == "MaskserveEncoderSaturated":
                r["expr"] = ('sum(rate(maskserve_stage_duration_seconds_sum{stage="encode"}[5m])) '
                             '/ count(count by (pod) (maskserve_encoder_batch_size_count)) > 0.9')
    out = promtool(tmp_path, [alert_test("MaskserveEncoderSaturated", encoders_saturated)], groups)
    assert out.returncode != 0 and "got:[]" in (out.stdout + out.stderr).replace(" ", "")
