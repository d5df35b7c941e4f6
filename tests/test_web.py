"""The web annotator (service/web) in a real browser: Debian's Chromium driven by Playwright against a local
stack with the shipped tiny model, offline (every request off 127.0.0.1 is blocked, and none may be tried).

- its arithmetic against the service's own: the COCO RLE codec against pycocotools, the bilinear resize against
  OpenCV's, each family's prompt points and mask upscaling against `engines.families`;
- an annotation session: the hover preview (decoded in the page by ONNX Runtime Web) against the service's
  best mask for that point; clicks, a negative point, a box, a candidate picked, undo, a new object, each mask
  drawn against the service's answer to the same prompts (refined by the same handles); segment everything
  against the service's own run; the exported COCO JSON decoded by pycocotools;
- a file that is no image: the status line shows the service's message.

A failing test leaves a screenshot and the console log in out/test-artifacts/.
"""

from __future__ import annotations

import base64
import json
import statistics
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from conftest import REPO, report

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing (Debian: apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

from maskserve.service.stack import LocalStack, free_port  # noqa: E402

ASTRONAUT = REPO / "maskserve" / "data" / "astronaut.jpg"
ARTIFACTS = REPO / "out" / "test-artifacts"
ORT_FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm")
MIN_IOU = 0.99
EVERYTHING = {"pointsPerSide": 8, "predIouThresh": 0.5, "stabilityScoreThresh": 0.5}  # masks on the tiny model

# Page-side helpers for moving bytes through page.evaluate as base64.
JS = """
const b64 = (u8) => { let s = ''; for (let i = 0; i < u8.length; i += 0x8000)
  s += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000)); return btoa(s); };
const unb64 = (t) => Uint8Array.from(atob(t), (c) => c.charCodeAt(0));
const f32in = (t) => new Float32Array(unb64(t).buffer);
const f32out = (a) => b64(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
const web = (name) => import(new URL('static/' + name, document.baseURI).href);
"""


# -- the service, over HTTP ---------------------------------------------------------------------------------

def http(url: str, body=None, timeout: float = 60):
    """(HTTP status, the answer's bytes) of a GET, or of a POST of `body` as JSON."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def call(stack, path: str, body=None) -> dict:
    status, raw = http(stack.url + path, body)
    assert status == 200, f"{path}: HTTP {status}: {raw[:500]!r}"
    return json.loads(raw)


def segment(stack, image_id: str, points, box=None, mask_from=None, best=False) -> dict:
    """The service's PromptResult for one prompt (points as (x, y, label))."""
    prompt = {"points": [{"x": x, "y": y, "label": label} for x, y, label in points]}
    if box is not None:
        prompt["box"] = box
    if mask_from is not None:
        prompt["maskFrom"] = mask_from
    options = {"maskFormat": "MASK_FORMAT_BITMAP", "bestMaskOnly": best}
    return call(stack, "/v1/images:segment", {"imageId": image_id, "prompts": [prompt], "options": options})["results"][0]


def bitmap(mask: dict) -> np.ndarray:
    h, w = mask["height"], mask["width"]
    return np.unpackbits(np.frombuffer(base64.b64decode(mask["bitmap"]), np.uint8))[: h * w].reshape(h, w).astype(bool)


def best_index(result: dict) -> int:
    return int(np.argmax([m["predictedIou"] for m in result["masks"]]))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


# -- the browser ------------------------------------------------------------------------------------------

@dataclass
class Tab:
    page: object
    blocked: list = field(default_factory=list)  # requests off 127.0.0.1, aborted
    console: list = field(default_factory=list)

    def evaluate(self, body: str, arg=None):
        """An async JS function body with the helpers above in scope, called with `arg`."""
        return self.page.evaluate(f"async (arg) => {{ {JS}\n{body} }}", arg)

    def mask(self, name: str) -> np.ndarray | None:
        """window.maskserve[name] ({width, height, data}) as a boolean array."""
        m = self.evaluate("const m = window.maskserve[arg]; return m && {w: m.width, h: m.height, d: b64(m.data)};",
                          name)
        return None if m is None else np.frombuffer(base64.b64decode(m["d"]), np.uint8).reshape(m["h"], m["w"]) > 0

    def drawn(self, layer: str) -> np.ndarray:
        """The pixels a canvas layer paints (alpha > 0)."""
        m = self.evaluate("""const c = document.getElementById(arg);
            const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const a = new Uint8Array(c.width * c.height);
            for (let i = 0; i < a.length; i++) a[i] = px[4 * i + 3] > 0;
            return {w: c.width, h: c.height, d: b64(a)};""", layer)
        return np.frombuffer(base64.b64decode(m["d"]), np.uint8).reshape(m["h"], m["w"]) > 0

    def hooks(self, expression: str):
        return self.page.evaluate(f"(() => {{ const m = window.maskserve; return {expression}; }})()")

    def at(self, x: float, y: float) -> tuple[float, float]:
        """Page coordinates of image pixel (x, y) on the (possibly scaled) canvas."""
        box = self.page.locator("#canvas").bounding_box()
        w, h = self.page.evaluate("[document.getElementById('canvas').width, document.getElementById('canvas').height]")
        return box["x"] + x * box["width"] / w, box["y"] + y * box["height"] / h

    def hovered(self, x: float, y: float) -> None:
        """Wait until the hover preview for image pixel (x, y) is made (and none is in flight)."""
        self.page.wait_for_function("([x, y]) => { const m = window.maskserve, p = m.hoverPoint; return p && "
                                    "!m.hoverBusy && Math.abs(p.x - x) < 1 && Math.abs(p.y - y) < 1; }", arg=[x, y])

    def answered(self, before: int) -> None:
        """Wait until a SegmentPrompt after `before` answers have been made has come back."""
        self.page.wait_for_function(f"window.maskserve.answered > {before} && window.maskserve.pending === 0")


@pytest.fixture(scope="module")
def stack():
    with LocalStack(http_port=free_port()) as s:
        for name in ORT_FILES:
            status, raw = http(f"{s.url}/static/ort/{name}")
            if status != 200:
                pytest.fail(f"the decoder does not serve ONNX Runtime Web's {name} (HTTP {status}: {raw[:300]!r}): "
                            "install it with `maskserve web pull` (into $MASKSERVE_CACHE/web, default "
                            "~/.cache/maskserve/web)", pytrace=False)
        yield s


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture
def tab(browser, stack, request):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    t = Tab(None)

    def route(r):  # offline: nothing but the stack on loopback
        if urlparse(r.request.url).hostname == "127.0.0.1":
            r.continue_()
        else:
            t.blocked.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    t.page = context.new_page()
    t.page.on("console", lambda m: t.console.append(f"{m.type}: {m.text}"))
    t.page.on("pageerror", lambda e: t.console.append(f"pageerror: {e}"))
    t.page.goto(stack.url + "/")
    failed = request.session.testsfailed
    yield t
    if request.session.testsfailed > failed:  # this test failed: leave what the page looked like
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / f"{request.node.name}.png"
        try:
            t.page.screenshot(path=str(shot), full_page=True)
        except Exception as exc:  # noqa: BLE001 - a dead page: the console log still helps
            t.console.append(f"(no screenshot: {exc})")
        (ARTIFACTS / f"{request.node.name}.console.txt").write_text("\n".join(t.console) + "\n")
        print(f"web test artifacts: {shot} and {shot.with_suffix('.console.txt')}")
    context.close()


def open_image(t: Tab, path: Path) -> None:
    t.page.set_input_files("#file", str(path))
    assert t.page.evaluate("window.maskserve.ready") is True
    if not t.hooks("m.hoverAvailable"):
        pytest.fail("hover preview unavailable: " + t.page.text_content("#hover-note") + "\n" + "\n".join(t.console))


# -- the page's arithmetic against the service's ------------------------------------------------------------

def test_rle_codec_matches_pycocotools(tab):
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    masks = [np.zeros((5, 7), bool), np.ones((6, 4), bool), rng.random((31, 17)) < 0.5, rng.random((64, 48)) < 0.02]
    blob = np.zeros((200, 300), bool)
    blob[40:160, 70:250] = True
    blob[90:100, 0:300] = True  # runs that cross columns' ends
    masks += [blob, rng.random((1, 1)) < 0.5]
    cases = []
    for m in masks:
        coco = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        cases.append({"h": m.shape[0], "w": m.shape[1], "data": base64.b64encode(m.astype(np.uint8).tobytes()).decode(),
                      "counts": coco["counts"].decode()})
    got = tab.evaluate("""const rle = await web('rle.js');
        return arg.map((c) => { const runs = rle.encode(unb64(c.data), c.h, c.w), back = rle.countsFromString(c.counts);
          return {counts: rle.countsToString(runs), area: rle.area(runs), bbox: rle.bbox(runs, c.h, c.w),
                  decoded: b64(rle.decode(back, c.h, c.w))}; });""", cases)
    for m, c, g in zip(masks, cases, got):
        coco = {"size": [c["h"], c["w"]], "counts": c["counts"].encode()}
        assert g["counts"] == c["counts"], m.shape  # the page's encoding is pycocotools'
        assert g["area"] == int(mask_utils.area(coco))
        assert g["bbox"] == mask_utils.toBbox(coco).tolist()
        decoded = np.frombuffer(base64.b64decode(g["decoded"]), np.uint8).reshape(m.shape)
        assert np.array_equal(decoded, m), m.shape  # and its decoding
    assert not tab.blocked


def ulps(a: np.ndarray, n: int = 4) -> float:
    """n float32 steps at the largest magnitude of `a`: how far two orders of float32 arithmetic may differ."""
    return float(n * np.spacing(np.abs(a).max().astype(np.float32)))


def test_resize_and_prompts_match_the_service(tab):
    """The hover preview's arithmetic: OpenCV's bilinear resize (as the service runs it: through IPP where pip's
    OpenCV has it), each family's point transform and upscale (SAM 3's with its hole filling: random logits have
    holes of every size)."""
    import cv2

    from maskserve.engines import families

    rng = np.random.default_rng(1)
    resizes = [(256, 256, 512, 512), (256, 256, 1024, 1024), (64, 64, 300, 417), (37, 53, 100, 80),
               (256, 256, 100, 150), (333, 517, 333, 517)]
    cases = []
    for sh, sw, dh, dw in resizes:
        src = (rng.standard_normal((sh, sw)) * 8).astype(np.float32)
        cases.append({"src": base64.b64encode(src.tobytes()).decode(), "shape": [sh, sw, dh, dw]})
    got = tab.evaluate("""const h = await web('hover.js');
        return arg.map(({src, shape: [sh, sw, dh, dw]}) => f32out(h.resizeLinear(f32in(src), sh, sw, sw, dh, dw)));""",
                       cases)
    for (sh, sw, dh, dw), c, g in zip(resizes, cases, got):
        src = np.frombuffer(base64.b64decode(c["src"]), np.float32).reshape(sh, sw)
        want = cv2.resize(src, (dw, dh), interpolation=cv2.INTER_LINEAR)
        out = np.frombuffer(base64.b64decode(g), np.float32).reshape(dh, dw)
        np.testing.assert_allclose(out, want, rtol=0, atol=ulps(want), err_msg=f"{(sh, sw)} -> {(dh, dw)}")

    # Upscales (low-res logits → original size) and point prompts, per family.
    M = 256
    shapes = [("sam", 512, (512, 512)), ("sam", 1024, (480, 640)), ("sam", 1024, (1500, 1000)),
              ("sam", 512, (333, 517)), ("sam2.1", 1024, (480, 640)), ("sam2.1", 1024, (100, 90)),
              ("sam2.1", 1024, (512, 512)), ("sam3", 1008, (300, 451)), ("sam3", 1008, (640, 480))]
    cases, lows, points = [], [], []
    for family, side, (h, w) in shapes:
        low = (rng.standard_normal((M, M)) * 6).astype(np.float32)
        xy = (rng.random((5, 2)) * [w, h]).astype(np.float32)  # the proto's float32
        lows.append(low)
        points.append(xy)
        cases.append({"family": family, "side": side, "h": h, "w": w, "low": base64.b64encode(low.tobytes()).decode(),
                      "points": xy.astype(float).tolist()})
    got = tab.evaluate("""const h = await web('hover.js');
        return arg.map((c) => ({
          up: f32out(h.upscale(c.family, f32in(c.low), 256, c.h, c.w, c.side)),
          points: c.points.map(([x, y]) => { const p = h.pointPrompt(c.family, x, y, c.h, c.w, c.side);
                                             return [...p.coords, ...p.labels]; }) }));""", cases)
    for (family, side, (h, w)), low, xy, g in zip(shapes, lows, points, got):
        fam = families.get(family)
        want = fam.upscale_map(low, (h, w), side, M)
        if family == "sam3":  # the filling is there to test: it changes the map
            assert not np.array_equal(want, families.get("sam2.1").upscale_map(low, (h, w), side, M))
        up = np.frombuffer(base64.b64decode(g["up"]), np.float32).reshape(h, w)
        np.testing.assert_allclose(up, want, rtol=0, atol=ulps(want), err_msg=f"{family} {(h, w)}")
        clear = np.abs(want) > ulps(want)  # a logit within rounding of 0 may land on either side
        assert np.array_equal((up > 0)[clear], (want > 0)[clear]), f"{family} {(h, w)}: masks differ"
        for (x, y), page in zip(xy, g["points"]):
            pts, labels = fam.prompt_points(np.array([[x, y]], np.float64), np.array([1]), (h, w), side)
            assert np.array_equal(np.array(page[:4], np.float32), pts.reshape(-1)), (family, x, y)
            assert page[4:] == labels.tolist()
    assert not tab.blocked


# -- an annotation session ------------------------------------------------------------------------------------

def test_annotate(tab, stack):
    from pycocotools import mask as mask_utils

    t, page = tab, tab.page
    open_image(t, ASTRONAUT)
    image_id = t.hooks("m.imageId")
    w, h = page.evaluate("[document.getElementById('canvas').width, document.getElementById('canvas').height]")
    assert (w, h) == (512, 512)
    ious = {"hover": [], "page": []}

    # Hover: the page's preview is the service's best mask for the point under the cursor.
    for x, y in [(256, 200), (150, 330), (400, 420), (60, 90), (300, 60), (470, 250)]:
        page.mouse.move(*t.at(x, y))
        t.hovered(x, y)
        p = t.hooks("m.hoverPoint")
        want = bitmap(segment(stack, image_id, [(p["x"], p["y"], 1)], best=True)["masks"][0])
        hover = t.mask("hoverMask")
        ious["hover"].append(iou(hover, want))
        assert ious["hover"][-1] >= MIN_IOU, f"hover at {p}: IoU {ious['hover'][-1]:.4f} with the service's mask"
        assert np.array_equal(t.drawn("hover-layer"), hover), "the hover layer does not show hoverMask"
    for x, y in [(100 + 30 * i, 120 + 25 * i) for i in range(10)]:  # more decodes, for the timing
        page.mouse.move(*t.at(x, y))
        t.hovered(x, y)

    def check(want: np.ndarray, what: str) -> np.ndarray:
        shown = t.mask("lastMask")
        assert shown is not None, f"{what}: no mask shown"
        ious["page"].append(iou(shown, want))
        assert ious["page"][-1] >= MIN_IOU, f"{what}: IoU {ious['page'][-1]:.4f} with the service's mask"
        assert np.array_equal(t.drawn("mask-layer"), shown), f"{what}: the mask layer does not show lastMask"
        return shown

    def click(x, y, button="left", modifiers=()) -> dict:
        n = t.hooks("m.answered")
        for key in modifiers:
            page.keyboard.down(key)
        page.mouse.click(*t.at(x, y), button=button)
        for key in modifiers:
            page.keyboard.up(key)
        t.answered(n)
        return t.hooks("m.points.at(-1)")

    # A click: the service's best mask for the point, as bestMaskOnly answers it.
    p1 = click(250, 330)
    assert p1["kind"] == "point" and p1["label"] == 1 and abs(p1["x"] - 250) < 1
    first = [(p1["x"], p1["y"], 1)]
    check(bitmap(segment(stack, image_id, first, best=True)["masks"][0]), "first click")
    r1 = segment(stack, image_id, first)  # the three candidates, with the handle the next prompt refines
    assert len(r1["masks"]) == 3 and page.locator("#candidates button").count() == 3

    # Another candidate picked: shown, and the one the next prompt refines.
    pick = (best_index(r1) + 1) % 3
    page.click(f"#candidates button[data-index='{pick}']")
    assert page.get_attribute(f"#candidates button[data-index='{pick}']", "aria-pressed") == "true"
    check(bitmap(r1["masks"][pick]), "candidate picked")

    # A negative point (right click), refining the picked mask by its handle.
    p2 = click(200, 360, button="right")
    assert p2["label"] == 0
    pts = first + [(p2["x"], p2["y"], 0)]
    r2 = segment(stack, image_id, pts, mask_from={"handle": r1["logitsHandle"],
                                                  "outputIndex": r1["masks"][pick]["outputIndex"]})
    after_negative = check(bitmap(r2["masks"][best_index(r2)]), "negative click")

    # Shift+click: negative too.
    p3 = click(330, 300, modifiers=["Shift"])
    assert p3["label"] == 0
    pts3 = pts + [(p3["x"], p3["y"], 0)]
    r3 = segment(stack, image_id, pts3, mask_from={"handle": r2["logitsHandle"],
                                                   "outputIndex": r2["masks"][best_index(r2)]["outputIndex"]})
    after_shift = check(bitmap(r3["masks"][best_index(r3)]), "shift+click")

    # A drag: a box, with the points so far.
    n = t.hooks("m.answered")
    page.mouse.move(*t.at(150, 230))
    page.mouse.down()
    page.mouse.move(*t.at(380, 480), steps=6)
    page.mouse.up()
    t.answered(n)
    b = t.hooks("m.points.at(-1)")
    assert b["kind"] == "box" and abs(b["x0"] - 150) < 1 and abs(b["y1"] - 480) < 1
    box = {k: b[k] for k in ("x0", "y0", "x1", "y1")}
    r4 = segment(stack, image_id, pts3, box=box, mask_from={"handle": r3["logitsHandle"],
                                                            "outputIndex": r3["masks"][best_index(r3)]["outputIndex"]})
    check(bitmap(r4["masks"][best_index(r4)]), "box")
    assert t.hooks("m.points.length") == 4

    # Undo: Ctrl+Z, then the button; each shows the answer before.
    page.keyboard.press("Control+z")
    assert t.hooks("m.points.length") == 3
    assert np.array_equal(t.mask("lastMask"), after_shift)
    page.click("#undo")
    assert t.hooks("m.points.length") == 2
    assert np.array_equal(check(after_negative, "undo"), after_negative)

    # Enter: the mask becomes annotation 1; the next object starts empty.
    page.keyboard.press("Enter")
    assert t.hooks("m.annotations.length") == 1 and t.hooks("m.lastMask") is None
    assert page.locator("#candidates button").count() == 0
    assert np.array_equal(t.drawn("annotation-layer"), after_negative)

    # Segment everything, with options that find masks on the tiny model: the service's masks, all drawn.
    page.fill("#points-per-side", str(EVERYTHING["pointsPerSide"]))
    page.fill("#pred-iou-thresh", str(EVERYTHING["predIouThresh"]))
    page.fill("#stability-thresh", str(EVERYTHING["stabilityScoreThresh"]))
    page.click("#everything")
    page.wait_for_function("!document.getElementById('everything').disabled && (window.maskserve.everythingTotal "
                           "!== null || document.getElementById('status').classList.contains('error'))", timeout=60_000)
    assert t.hooks("m.everythingTotal") is not None, page.text_content("#status")
    status, raw = http(stack.url + "/v1/images:segmentEverything", {"imageId": image_id, "options": EVERYTHING})
    assert status == 200
    lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    assert not [line for line in lines if "error" in line]
    found = [m for line in lines if "masks" in line for m in line["masks"]["masks"]]
    assert found and len(found) == t.hooks("m.everythingTotal") == t.hooks("m.annotations.length") - 1
    assert t.hooks("m.annotations.slice(1).map((a) => a.segmentation.counts)") == \
        [base64.b64decode(m["segmentation"]["counts"]).decode() for m in found]
    everything = [mask_utils.decode({"size": [h, w], "counts": base64.b64decode(m["segmentation"]["counts"])}) > 0
                  for m in found]
    assert np.array_equal(t.drawn("annotation-layer"), np.logical_or.reduce([after_negative, *everything]))
    assert "masks" in page.text_content("#status")

    # Export: COCO JSON that pycocotools reads back as the same masks.
    with page.expect_download() as download:
        page.click("#export")
    coco = json.loads(Path(download.value.path()).read_text())
    assert coco["categories"] == [{"id": 1, "name": "object"}]
    assert coco["images"] == [{"id": 1, "file_name": "astronaut.jpg", "width": w, "height": h}]
    anns = coco["annotations"]
    assert len(anns) == 1 + len(found)
    scores = [r2["masks"][best_index(r2)]["predictedIou"]] + [m["predictedIou"] for m in found]
    for a, want, score in zip(anns, [after_negative, *everything], scores):
        rle = {"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()}
        assert a["segmentation"]["size"] == [h, w] and a["image_id"] == 1 and a["category_id"] == 1
        assert np.array_equal(mask_utils.decode(rle) > 0, want)
        assert a["iscrowd"] == 0 and a["area"] == int(mask_utils.area(rle))
        assert a["bbox"] == mask_utils.toBbox(rle).tolist()
        assert a["score"] == pytest.approx(score)
    assert len({a["id"] for a in anns}) == len(anns)

    assert not t.blocked, f"requests off 127.0.0.1: {t.blocked}"
    assert not [line for line in t.console if line.startswith(("pageerror", "error"))], t.console
    times = t.hooks("m.hoverTimesMs")
    warm = times[1:] or times  # the first decode includes the session's warm-up
    report(f"web annotator: in-browser hover decode + upscale ({w}x{h}, tiny model, ONNX Runtime Web wasm, "
           f"{t.hooks('m.hoverThreads')} thread(s)): median {statistics.median(warm):.1f} ms over {len(warm)} "
           f"(first {times[0]:.0f} ms); IoU with the service: hover min {min(ious['hover']):.4f} over "
           f"{len(ious['hover'])} points, page min {min(ious['page']):.4f} over {len(ious['page'])} masks")


def test_a_file_that_is_no_image(tab, stack, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"these are notes, not an image\n" * 10)
    status, raw = http(stack.url + "/v1/images:encode",
                       {"image": {"encoded": base64.b64encode(bad.read_bytes()).decode()}, "wait": True})
    assert status == 400
    message = json.loads(raw)["message"]
    tab.page.set_input_files("#file", str(bad))
    tab.page.wait_for_function("document.getElementById('status').classList.contains('error')")
    assert message in tab.page.text_content("#status")
    assert tab.hooks("m.imageId") is None
    assert not tab.blocked
