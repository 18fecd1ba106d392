"""Web demo: the HTTP API in-process, then end to end in Debian's Chromium driven by Playwright.

The browser test uploads a synthetic clip, clicks points on its first frame, receives the tracked points
streamed back and checks them against the clip's known motion, downloads the tracks, has a bad upload
refused with a clear message and a following good one accepted, and records the (fake) camera. It skips,
saying why, only when no ``chromium`` is installed (``.ci/run`` installs Debian's).

Set ``TRACKER_SCREENSHOTS=DIR`` to write the page after tracking to ``DIR/serve.png`` (the README's picture).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tracker.apps.serve import ID, create_app
from tracker.apps.serve_inputs import sniff_container
from tracker.apps.serve_service import ServeConfig
from tracker.io.formats import read_tracks
from tracker.synthetic import moving_objects, write_video

pytest.importorskip("fastapi", reason="the web extra is not installed (pip install '.[web]')")
NUM_FRAMES, SIZE = 24, (240, 320)
CHROMIUM = shutil.which("chromium")
LOCAL = "http://127.0.0.1:8000"  # the TestClient's Host: loopback, as `track serve` is by default


@pytest.fixture(scope="module")
def video():
    return moving_objects(num_frames=NUM_FRAMES, size=SIZE, seed=0)


@pytest.fixture(scope="module")
def files(video, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("serve")
    write_video(str(d / "clip.mp4"), video.frames, fps=25)
    write_video(str(d / "one_frame.mp4"), video.frames[:1], fps=25)
    (d / "not_a_video.mp4").write_text("hello, I am a text file with a video's name\n")
    head = (d / "clip.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(head[:2000])  # an mp4 header, no decodable frame
    (d / "playlist.mp4").write_text("#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n")
    return {p.stem: p for p in d.iterdir()}


def object_points(video, n: int = 4) -> np.ndarray:
    x0, y0, x1, y1 = video.object_boxes[0]
    rng = np.random.default_rng(1)
    return np.stack([rng.uniform(x0 + 14, x1 - 14, n), rng.uniform(y0 + 14, y1 - 14, n)], 1)


@pytest.fixture
def client(tmp_path):
    from fastapi.testclient import TestClient

    app = create_app(ServeConfig(model="sift", max_upload_mb=1, workdir=tmp_path / "work"))
    with TestClient(app, base_url=LOCAL) as c:
        yield c


def post_video(client, content, content_type: str = "application/octet-stream"):
    """Upload as the page does: the raw body with a Content-Type that a cross-site form cannot send."""
    return client.post("/api/videos", content=content, headers={"Content-Type": content_type})


def read_events(client, url: str) -> list[tuple[str, dict]]:
    events, kind = [], None
    with client.stream("GET", url) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    return events


def test_bad_uploads_are_refused_clearly_and_the_server_keeps_serving(client, files):
    cases = [
        ("not_a_video", 415, "not a video (it looks like text); supported: MP4/MOV, WebM/MKV"),
        ("playlist", 415, "not a video (it looks like an HLS playlist)"),  # never handed to FFmpeg
        ("truncated", 415, "cannot decode the video (mp4 container, but no frame decodes)"),
        ("one_frame", 415, "the video has 1 frame; tracking needs at least 2"),
    ]
    for name, status, message in cases:
        r = post_video(client, files[name].read_bytes())
        assert r.status_code == status and message in r.json()["error"], (name, r.text)
    r = post_video(client, b"")
    assert r.status_code == 400 and "empty" in r.json()["error"]
    big = b"\x00" * (1 << 20) + b"x"
    r = post_video(client, big)  # declared length over the limit
    assert r.status_code == 413 and r.json()["error"] == "the upload is 1.0 MB; the limit is 1 MB"
    r = post_video(client, iter([big[:600_000], big[600_000:]]))  # chunked, no length given
    assert r.status_code == 413 and "larger than the 1 MB limit" in r.json()["error"]
    good = post_video(client, files["clip"].read_bytes(), "video/mp4")
    assert good.status_code == 200, good.text
    body = good.json()
    assert (body["width"], body["height"], body["num_frames"], body["container"]) == (320, 240, NUM_FRAMES, "mp4")
    stored = sorted(p.name for p in (client.app.state.service.videos_dir).iterdir())
    assert stored == sorted([f"{body['video']}.video", f"{body['video']}.jpg", body["video"]])  # refused: nothing
    assert ID.match(body["video"])
    first = client.get(body["first_frame"])
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"


def test_non_ascii_text_cut_mid_character_still_reads_as_text():
    """The 512 bytes sniffed may end inside a UTF-8 character: a French or Japanese text file is still text."""
    from tracker.apps.serve_inputs import describe_content

    assert describe_content(("é" * 300).encode()[:511]) == "text"
    assert describe_content(("日本語" * 100).encode()[:512]) == "text"
    assert describe_content(b"\x80\x81\x82\x83 not utf-8") == "no format known here"
    assert describe_content(b"%PDF-1.7 ...") == "a PDF document"


def test_frames_over_the_pixel_limit_are_refused(files, tmp_path):
    from fastapi.testclient import TestClient

    with TestClient(
        create_app(ServeConfig(model="sift", max_pixels=320 * 239, workdir=tmp_path)), base_url=LOCAL
    ) as small:
        r = post_video(small, files["clip"].read_bytes())
    assert r.status_code == 415 and r.json()["error"] == "the frames are 320x240, over the limit of 0.07648 megapixels"


def test_client_text_never_becomes_a_path(client):
    for url in ["/api/videos/..%2F..%2Fetc%2Fpasswd/first.jpg", "/api/videos/ABC/first.jpg", "/api/jobs/x/tracks.json"]:
        r = client.get(url)
        assert r.status_code == 404 and "error" in r.json(), url
    r = client.post(f"/api/videos/{'0' * 32}/jobs", json={"points": [[1, 1]]})
    assert r.status_code == 404 and "upload it again" in r.json()["error"]
    assert sniff_container(b"\x00\x00\x00\x18ftypmp42") == "mp4" and sniff_container(b"#EXTM3U\n...") is None


def test_tracking_job_streams_points_and_tracks_match_the_motion(client, files, video):
    vid = post_video(client, files["clip"].read_bytes()).json()["video"]
    r = client.post(f"/api/videos/{vid}/jobs", json={"points": [[10.0, 10.0], [400.0, 5.0]]})
    assert r.status_code == 400 and r.json()["error"] == "point (400, 5) is outside the 320x240 frame"
    r = client.post(f"/api/videos/{vid}/jobs", json={"points": []})
    assert r.status_code == 400 and "no points" in r.json()["error"]
    r = client.post(f"/api/videos/{vid}/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "must be JSON" in r.json()["error"]
    points = object_points(video)
    job = client.post(f"/api/videos/{vid}/jobs", json={"points": points.tolist()}).json()
    events = read_events(client, job["events"])
    frames = [e for kind, e in events if kind == "frame"]
    assert [e["frame"] for e in frames] == list(range(NUM_FRAMES)) and events[-1][0] == "done"
    assert all(e["image"].startswith("data:image/jpeg;base64,") for e in frames)
    xy = np.array([e["xy"] for e in frames], np.float64)
    error = np.linalg.norm(xy - video.ground_truth(points), axis=-1)
    assert error.mean() < 1.5  # sift on this clip: about 1 px
    done = events[-1][1]
    assert done["frames"] == NUM_FRAMES and done["points"] == 4 and done["model"] == "sift"
    for suffix in ("json", "csv"):
        r = client.get(done[f"tracks_{suffix}"])
        assert r.status_code == 200 and f'filename="tracks.{suffix}"' in r.headers["content-disposition"]
    tracks = json.loads(client.get(done["tracks_json"]).content)
    assert np.allclose(np.stack([tracks["x"], tracks["y"]], -1), xy, atol=2e-3)


def test_points_on_later_frames_overlay_video_frames_and_visibility_summary(client, files, video, tmp_path):
    import cv2

    from tracker.io.drawing import palette_hex

    info = client.get("/api/info").json()
    assert info["palette"][:3] == palette_hex(3) and len(info["palette"]) == info["max_points"]
    assert info["fallback"].startswith("sift is the weight-free fallback: expect drift")
    vid = post_video(client, files["clip"].read_bytes()).json()["video"]
    frame5 = client.get(f"/api/videos/{vid}/frames/5.jpg")
    assert frame5.status_code == 200 and frame5.headers["content-type"] == "image/jpeg"
    assert client.get(f"/api/videos/{vid}/frames/{NUM_FRAMES}.jpg").status_code == 404
    points = object_points(video, 2)
    body = {"points": [points[0].tolist(), [*points[1].tolist(), 5]]}  # the second point is given on frame 5
    job = client.post(f"/api/videos/{vid}/jobs", json=body).json()
    events = read_events(client, job["events"])
    frames = [e for kind, e in events if kind == "frame"]
    assert all(f["xy"][1] is None for f in frames[:5]) and frames[5]["xy"][1] == pytest.approx(points[1], abs=1e-3)
    kind, done = events[-1]
    assert kind == "done" and 0.8 < done["visible_share"] <= 1.0 and isinstance(done["lost"], list)
    r = client.get(done["overlay_mp4"])
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    (tmp_path / "o.mp4").write_bytes(r.content)
    capture = cv2.VideoCapture(str(tmp_path / "o.mp4"))
    decoded = []
    while (frame := capture.read()[1]) is not None:
        decoded.append(frame.shape)
    assert decoded == [(240, 320, 3)] * NUM_FRAMES  # the full-size overlay, every frame


def test_visibility_summary_names_the_points_lost_and_when():
    from tracker.apps.serve_service import visibility_summary

    visible = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1], [1, 1, 1]], bool)  # [T=4, N=3]
    summary = visibility_summary(visible, np.array([0, 1, 2]))
    # point 1 lost on frame 2; point 2 is given on frame 1 and always visible from there; point 3 from frame 2
    assert summary == {"visible_share": round(8 / 9, 4), "lost": [[1, 2]]}


def test_stop_cancels_a_running_job_and_a_queued_one(client, files, video):
    vid = post_video(client, files["clip"].read_bytes()).json()["video"]
    points = {"points": object_points(video, 2).tolist()}
    first = client.post(f"/api/videos/{vid}/jobs", json=points).json()
    second = client.post(f"/api/videos/{vid}/jobs", json=points).json()  # waits for the one worker
    assert client.post(f"/api/jobs/{second['job']}/cancel", json={}).status_code == 200
    events, kind = [], None
    with client.stream("GET", first["events"]) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
                if kind == "frame" and len(events) == 1:  # the first frame is out: stop it
                    assert client.post(f"/api/jobs/{first['job']}/cancel", json={}).status_code == 200
    kind, last = events[-1]
    assert kind == "cancelled" and 1 <= last["frames"] < NUM_FRAMES, (kind, last)
    assert read_events(client, second["events"])[-1] == ("cancelled", {"frames": 0})
    r = client.get(f"/api/jobs/{first['job']}/overlay.mp4")
    assert r.status_code == 409 and "cancelled" in r.json()["error"]
    assert client.post(f"/api/jobs/{'0' * 32}/cancel", json={}).status_code == 404


def test_demo_clip_comes_with_points_on_its_objects(client):
    r = client.post("/api/demo", json={})
    assert r.status_code == 200, r.text
    demo = r.json()
    assert (demo["width"], demo["height"], demo["num_frames"]) == (320, 240, 48)
    pts = np.array(demo["suggested_points"])
    assert len(pts) >= 2 and (pts >= 0).all() and (pts[:, 0] < 320).all() and (pts[:, 1] < 240).all()
    assert client.get(demo["first_frame"]).status_code == 200


# --------------------------------------------------------------------------- under attack


def one_line_error(r) -> str:
    """The error of a JSON error answer; fails unless it is exactly one line."""
    assert r.headers["content-type"] == "application/json", r.text
    message = r.json()["error"]
    assert message and "\n" not in message and len(message) < 300, message
    return message


def test_foreign_host_names_are_refused_dns_rebinding(client):
    """A page of evil.example whose name is re-pointed at 127.0.0.1 reaches the server with Host: evil.example."""
    for host in [
        "evil.example",
        "evil.example:8000",
        "127.0.0.1.evil.example",
        "localhost.evil.example:8000",
        "localhost:8000@evil.example",
        "localhost:http",
        "[::1",
        "",
        "0.0.0.0:8000",
    ]:
        for method, url in [("GET", "/"), ("GET", "/api/info"), ("GET", "/app.js"), ("POST", "/api/videos")]:
            r = client.request(method, url, headers={"Host": host, "Content-Type": "video/mp4"}, content=b"x")
            assert r.status_code == 400 and "not served here" in one_line_error(r), (host, url, r.status_code)
            assert r.headers["x-content-type-options"] == "nosniff"
    assert client.app.state.service.videos == {} and not any(client.app.state.service.videos_dir.iterdir())
    for host in ["localhost", "LOCALHOST:8000", "127.0.0.1", "127.0.0.1:8000", "127.3.2.1:1", "[::1]", "[::1]:8000"]:
        r = client.get("/api/info", headers={"Host": host})
        assert r.status_code == 200 and r.json()["model"] == "sift", host


def test_host_names_served_when_bound_to_another_address(tmp_path):
    from fastapi.testclient import TestClient

    from tracker.apps.serve_guard import HostPolicy

    config = ServeConfig(
        model="sift", host="192.168.1.5", allowed_hosts=("tracker.lan", "[fd00::5]:8443"), workdir=tmp_path
    )
    with TestClient(create_app(config), base_url="http://192.168.1.5:8000") as c:
        for host, status in [
            ("192.168.1.5", 200),
            ("192.168.1.5:8000", 200),
            ("Tracker.LAN:8000", 200),
            ("[fd00::5]:8443", 200),
            ("[fd00::5]:8000", 400),
            ("localhost:8000", 200),
            ("192.168.1.6:8000", 400),
            ("evil.example", 400),
            ("tracker.lan.evil.example", 400),
        ]:
            assert c.get("/api/info", headers={"Host": host}).status_code == status, host
    wildcard = HostPolicy("0.0.0.0", ())
    assert wildcard.allows("127.0.0.1:8000") and not wildcard.allows("0.0.0.0:8000")
    assert not wildcard.allows("192.168.1.5:8000")  # the names of an all-interfaces server are given by --allowed-host
    with pytest.raises(ValueError, match="not a host name"):
        HostPolicy("127.0.0.1", ("evil example",))


def test_cross_site_posts_are_refused_csrf(client, files):
    """A form of any web site can POST text/plain, multipart or urlencoded bodies without a preflight."""
    clip = files["clip"].read_bytes()
    for content_type in [
        None,
        "text/plain",
        "text/plain;charset=UTF-8",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "TEXT/PLAIN",
    ]:
        headers = {} if content_type is None else {"Content-Type": content_type}
        r = client.post("/api/videos", content=clip, headers=headers)
        assert r.status_code == 415 and "Content-Type" in one_line_error(r), (content_type, r.text)
    for content_type in ["application/json", "image/png", "text/html"]:  # not what an upload is sent as
        r = post_video(client, clip, content_type)
        assert r.status_code == 415 and "application/octet-stream or video/*" in one_line_error(r), content_type
    for origin in ["http://evil.example", "null", "http://127.0.0.1:8001", "http://127.0.0.1:8000.evil.example"]:
        r = client.post("/api/videos", content=clip, headers={"Content-Type": "video/mp4", "Origin": origin})
        assert r.status_code == 403 and "origin" in one_line_error(r), origin
    assert client.app.state.service.videos == {}  # nothing refused was stored
    r = client.post("/api/videos", content=clip, headers={"Content-Type": "video/mp4", "Origin": LOCAL})
    assert r.status_code == 200, r.text  # the page's own origin
    vid = r.json()["video"]
    body = json.dumps({"points": [[100.0, 100.0]]}).encode()
    for headers in [{"Content-Type": "text/plain"}, {}, {"Content-Type": "application/x-www-form-urlencoded"}]:
        r = client.post(f"/api/videos/{vid}/jobs", content=body, headers=headers)
        assert r.status_code == 415 and "Content-Type" in one_line_error(r), headers
    r = client.post(f"/api/videos/{vid}/jobs", content=body, headers={"Content-Type": "text/json"})
    assert r.status_code == 415 and "application/json" in one_line_error(r)
    r = client.post(f"/api/videos/{vid}/jobs", json={"points": [[100.0, 100.0]]}, headers={"Origin": "https://x.io"})
    assert r.status_code == 403 and "origin" in one_line_error(r)
    assert client.app.state.service.jobs == {}
    r = client.post(f"/api/videos/{vid}/jobs", json={"points": [[100.0, 100.0]]}, headers={"Origin": LOCAL})
    assert r.status_code == 200 and ID.match(r.json()["job"])


def test_points_body_over_the_cap_is_refused_before_parsing(client, files):
    vid = post_video(client, files["clip"].read_bytes()).json()["video"]
    url = f"/api/videos/{vid}/jobs"
    big = json.dumps({"points": [[10.5, 20.5]] * 100_000}).encode()  # 1.4 MB, valid JSON
    r = client.post(url, content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text  # not parsed, so not "100000 points; at most 256"

    from tracker.apps.serve_inputs import points_body_limit

    limit = points_body_limit(client.app.state.service.config.max_points)
    assert 20_000 < limit < 400_000 and one_line_error(r) == f"the points body is over {limit} bytes"
    pretty = json.dumps({"points": [[-123.456789, 7654.321098]] * 256}, indent=4).encode()
    assert len(pretty) < limit  # max_points points, pretty-printed, fit
    chunks = iter([b'{"points": [', *[b"[1, 1], " * 1000] * 200, b"[1, 1]]}"])  # chunked, no length given
    r = client.post(url, content=chunks, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and one_line_error(r) == f"the points body is over {limit} bytes"
    r = client.post(url, content=b"[" * (limit + 1), headers={"Content-Type": "application/json"})
    assert r.status_code == 413  # never parsed: this would be a nesting error
    assert client.app.state.service.jobs == {}


def test_malformed_points_are_a_400_with_one_line(client, files):
    vid = post_video(client, files["clip"].read_bytes()).json()["video"]
    url = f"/api/videos/{vid}/jobs"
    deep = '{"points": ' + "[" * 20_000 + "]" * 20_000 + "}"  # 40 kB, under the cap
    cases = [
        ('{"points": [["10", "20"]]}', "points[0] must be [x, y], two numbers (or [x, y, frame]); got a string"),
        ('{"points": [[true, false]]}', "points[0] must be [x, y], two numbers (or [x, y, frame]); got true/false"),
        ('{"points": [10, 20]}', "points[0] must be [x, y], two numbers (or [x, y, frame]); got a number"),
        (
            '{"points": [[1, 2], [1, 2, 3, 4]]}',
            "points[1] must be [x, y], two numbers (or [x, y, frame]); got a list of 4",
        ),
        ('{"points": [[1, 2, 2.5]]}', "points[0]: the frame must be a whole number >= 0"),
        ('{"points": [[1, 2, -1]]}', "points[0]: the frame must be a whole number >= 0"),
        ('{"points": [[1, 2], [1, 2, 24]]}', "points[1] is on frame 24, but the video has 24 frames"),
        ('{"points": [[1, null]]}', "points[0] must be [x, y], two numbers (or [x, y, frame]); got null"),
        ('{"points": [[1, [2]]]}', "points[0] must be [x, y], two numbers (or [x, y, frame]); got a list"),
        ('{"points": [{"x": 1, "y": 2}]}', "points[0] must be [x, y], two numbers (or [x, y, frame]); got an object"),
        ('{"points": [[1' + "0" * 400 + ", 2]]}", "a number in the body is too large"),
        ('{"points": [[1e400, 2]]}', "a number in the body is too large"),
        ('{"points": [[' + "7" * 5000 + ", 2]]}", "a number in the body is too large"),
        ('{"points": [[NaN, 2]]}', "NaN is not a number JSON allows"),
        ('{"points": [[-Infinity, 2]]}', "-Infinity is not a number JSON allows"),
        (deep, "the body is nested too deeply"),
        ('{"points": ' + "[" * 5_000 + "]" * 5_000 + "}", "the body is nested too deeply"),
        ('{"points": "[[1, 2]]"}', 'the body must be JSON: {"points": [[x, y], ...]}'),
        ("[[1, 2]]", 'the body must be JSON: {"points": [[x, y], ...]}'),
        ('{"points": [[1, 2]]', 'the body must be JSON: {"points": [[x, y], ...]}'),
        (b'{"points": [[1, 2]], "\xff": 0}', 'the body must be JSON: {"points": [[x, y], ...]}'),
    ]
    for body, message in cases:
        content = body if isinstance(body, bytes) else body.encode()
        r = client.post(url, content=content, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and one_line_error(r) == message, (body[:60], r.status_code, r.text[:200])
    assert client.app.state.service.jobs == {}
    r = client.post(url, content=b'{"points": [[100, 100.5]]}', headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text  # the server kept serving, and integers are numbers
    job = client.app.state.service.job(r.json()["job"])
    assert job.points.tolist() == [[100.0, 100.5, 0.0]]  # x, y and the query frame (0 when not given)


def test_service_start_checks_points_itself(client, files):
    service = client.app.state.service
    vid = post_video(client, files["clip"].read_bytes()).json()["video"]
    from tracker.errors import TrackerError

    for points in [[["10", "20"]], [[True, False]], [10, 20], [[10**400, 1]], [[float("nan"), 1]], "[[1, 2]]"]:
        with pytest.raises(TrackerError):
            service.start(vid, points)
    assert service.jobs == {}


def test_serve_command_bad_input_is_one_line(capsys):
    from tracker.apps.cli import main as track_main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for argv, message in [
            (["--port", str(port), "--model", "sift"], f"cannot listen on 127.0.0.1:{port}"),
            (["--max-frames", "1", "--model", "sift"], "--max-frames at least 2"),
            (["--model", "sift", "--weights", "random"], "--weights does not apply to sift"),
            (["--model", "sift", "--allowed-host", "a b"], "--allowed-host: 'a b' is not a host name"),
        ]:
            assert track_main(["serve", *argv]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("track: error: ") and message in err[0], err


def test_serve_command_passes_host_and_allowed_hosts_to_the_guard(monkeypatch, capsys):
    import uvicorn
    from fastapi.testclient import TestClient

    from tracker.apps.cli import main as track_main

    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: served.append(self.config.app))
    argv = ["serve", "--model", "sift", "--host", "0.0.0.0", "--port", "0", "--allowed-host", "tracker.lan"]
    argv += ["--allowed-host", "[fd00::5]:8443"]
    assert track_main(argv) == 0
    err = capsys.readouterr().err
    assert "anyone who can reach it can upload; Host names served: loopback names, [fd00::5]:8443, tracker.lan" in err
    with TestClient(served[0], base_url="http://tracker.lan:8000") as c:
        for host, status in [("tracker.lan:8000", 200), ("127.0.0.1:8000", 200), ("evil.example:8000", 400)]:
            assert c.get("/api/info", headers={"Host": host}).status_code == status, host


# --------------------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def served_app(tmp_path_factory):
    return create_app(ServeConfig(model="sift", workdir=tmp_path_factory.mktemp("work")))


@pytest.fixture(scope="module")
def server(served_app):
    """The app served by uvicorn on a free port of 127.0.0.1, in a background thread."""
    import uvicorn

    app = served_app
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()


@pytest.fixture(scope="module")
def page(server):
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                "--host-resolver-rules=MAP evil.example 127.0.0.1",  # DNS rebinding: the name points here
            ],
        )
        context = browser.new_context(viewport={"width": 1000, "height": 1100}, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(server)
        yield page
        browser.close()


def upload(page, path: Path) -> dict:
    """Choose a file in the page; returns what the page shows afterwards."""
    page.evaluate("window.tracker.video = null; window.tracker.error = null")
    page.set_input_files("#file", str(path))
    page.wait_for_function("window.tracker.video || window.tracker.error")
    return page.evaluate("({video: window.tracker.video, error: window.tracker.error})")


def click_image(page, xy: np.ndarray, size: tuple[int, int]) -> None:
    """Click at pixel ``xy`` of the frame shown in the canvas (pixel centres at integers)."""
    box = page.locator("#view").bounding_box()
    h, w = size
    for x, y in xy:
        page.mouse.click(box["x"] + (x + 0.5) * box["width"] / w, box["y"] + (y + 0.5) * box["height"] / h)


def test_browser_upload_click_track_download_and_a_bad_upload(page, files, video, tmp_path):
    shown = upload(page, files["clip"])
    assert shown["error"] is None and shown["video"]["num_frames"] == NUM_FRAMES
    assert "Click points" in page.inner_text("#status")
    wanted = object_points(video)
    click_image(page, wanted, SIZE)
    clicked = np.array(page.evaluate("window.tracker.points"))
    assert clicked.shape == (4, 3) and (clicked[:, 2] == 0).all()  # x, y and the query frame
    clicked = clicked[:, :2]
    assert np.abs(clicked - wanted).max() < 0.6  # CSS pixels are 2.6 image pixels
    assert page.inner_text("#count") == "4 points"
    page.click("#track")
    page.wait_for_function("window.tracker.done || window.tracker.error")
    assert page.evaluate("window.tracker.error") is None
    frames = page.evaluate("window.tracker.frames")
    assert [f["frame"] for f in frames] == list(range(NUM_FRAMES))
    xy = np.array([f["xy"] for f in frames], np.float64)
    error = np.linalg.norm(xy - video.ground_truth(clicked), axis=-1)
    assert error.mean() < 1.5 and np.array([f["visible"] for f in frames]).mean() > 0.8
    assert "Done: 4 points through 24 frames" in page.inner_text("#status")
    if os.environ.get("TRACKER_SCREENSHOTS"):
        page.wait_for_timeout(300)  # the last overlay image decodes
        page.screenshot(path=str(Path(os.environ["TRACKER_SCREENSHOTS"]) / "serve.png"), full_page=True)

    with page.expect_download() as download:
        page.click("#dl-json")
    assert download.value.suggested_filename == "tracks.json"
    saved = tmp_path / "tracks.json"
    download.value.save_as(saved)
    tracks = read_tracks(saved)
    assert np.allclose(np.stack([tracks["x"], tracks["y"]], -1), xy, atol=2e-3)
    assert json.loads(saved.read_text())["model"] == "sift"

    bad = upload(page, files["not_a_video"])
    assert bad["video"] is None and "not_a_video.mp4: not a video (it looks like text)" in page.inner_text("#error")
    assert page.is_disabled("#track")
    again = upload(page, files["clip"])
    assert again["error"] is None and again["video"]["width"] == 320 and page.inner_text("#error") == ""
    click_image(page, wanted[:1], SIZE)
    page.click("#track")
    page.wait_for_function("window.tracker.done || window.tracker.error")
    assert page.evaluate("window.tracker.done.frames") == NUM_FRAMES


def canvas_pixel(page, x: float, y: float) -> list[int]:
    """The canvas's RGB at pixel (x, y) of the frame."""
    return page.evaluate(
        "([x, y]) => Array.from(document.getElementById('view').getContext('2d')"
        ".getImageData(Math.round(x), Math.round(y), 1, 1).data.slice(0, 3))",
        [x, y],
    )


def hex_rgb(value: str) -> np.ndarray:
    return np.array([int(value[k : k + 2], 16) for k in (1, 3, 5)])


def test_browser_demo_palette_removal_replay_download_and_stop(page, tmp_path):
    """The demo clip with its suggested points; a marker keeps its colour through tracking; a point removed;
    the slider and Play replay the frames; the overlay video downloads; a click after Done clears the result;
    Stop ends a run with the frames so far kept for replay."""
    import cv2

    page.evaluate("window.tracker.video = null; window.tracker.error = null")
    page.click("#demo")
    page.wait_for_function("window.tracker.video || window.tracker.error")
    assert page.evaluate("window.tracker.error") is None
    points = page.evaluate("window.tracker.points")
    palette = page.evaluate("window.tracker.info.palette")
    assert len(points) >= 3 and page.locator("#points li").count() == len(points)
    page.click("#points li:nth-child(2) button")  # remove point 2
    assert page.evaluate("window.tracker.points.length") == len(points) - 1
    assert "Removed point 2" in page.inner_text("#status")
    # drag point 1 by (6, 4) pixels, then undo a point added on frame 5 with the query-frame slider
    box = page.locator("#view").bounding_box()
    to_css = lambda px, py: (box["x"] + (px + 0.5) * box["width"] / 320, box["y"] + (py + 0.5) * box["height"] / 240)  # noqa: E731
    page.mouse.move(*to_css(*points[0][:2]))
    page.mouse.down()
    page.mouse.move(*to_css(points[0][0] + 3, points[0][1] + 2))
    page.mouse.move(*to_css(points[0][0] + 6, points[0][1] + 4))
    page.mouse.up()
    moved = page.evaluate("window.tracker.points[0]")
    assert np.allclose(moved[:2], [points[0][0] + 6, points[0][1] + 4], atol=0.6) and moved[2] == 0
    assert page.evaluate("window.tracker.points.length") == len(points) - 1  # a drag adds nothing
    page.locator("#query-frame").fill("5")
    page.wait_for_function("window.tracker.queryFrame === 5")
    click_image(page, np.array([[40.0, 200.0]]), (240, 320))
    assert page.evaluate("window.tracker.points.at(-1)")[2] == 5
    page.click("#undo")
    page.locator("#query-frame").fill("0")
    page.wait_for_function("window.tracker.queryFrame === 0")
    assert page.evaluate("window.tracker.points.length") == len(points) - 1
    x, y, _ = moved
    before = np.array(canvas_pixel(page, x, y))
    assert np.abs(before - hex_rgb(palette[0])).max() <= 8, (before, palette[0])

    page.click("#track")
    page.wait_for_function("window.tracker.done || window.tracker.error")
    assert page.evaluate("window.tracker.error") is None
    n = page.evaluate("window.tracker.done.frames")
    assert page.evaluate("window.tracker.images.filter(Boolean).length") == n
    done = page.inner_text("#status")
    assert "% visible" in done and ("lost at frame" in done or "no point lost" in done), done
    # replay: the slider shows frame 0 again, where point 1 sits on its query position in the same colour
    page.locator("#scrub").fill("0")
    page.wait_for_function("window.tracker.shown === 0")
    page.wait_for_timeout(150)  # the JPEG decodes
    after = np.array(canvas_pixel(page, x, y))
    assert np.abs(after - hex_rgb(palette[0])).max() <= 45, (after, palette[0])  # JPEG-coded, same colour
    first = page.evaluate("document.getElementById('view').toDataURL()")
    page.locator("#scrub").fill(str(n - 1))
    page.wait_for_function(f"window.tracker.shown === {n - 1}")
    page.wait_for_timeout(150)
    assert page.evaluate("document.getElementById('view').toDataURL()") != first
    assert page.inner_text("#frame-label") == f"frame {n} / {n}"
    page.click("#play")
    page.wait_for_function(f"window.tracker.playing === false && window.tracker.shown === {n - 1}")

    with page.expect_download() as download:
        page.click("#dl-video")
    assert download.value.suggested_filename == "overlay.mp4"
    download.value.save_as(tmp_path / "overlay.mp4")
    capture = cv2.VideoCapture(str(tmp_path / "overlay.mp4"))
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == n
    if os.environ.get("TRACKER_SCREENSHOTS"):
        page.screenshot(path=str(Path(os.environ["TRACKER_SCREENSHOTS"]) / "serve_done.png"), full_page=True)

    # a click after Done: the old result (links, summary) goes, the point is added on the query frame
    click_image(page, np.array([[40.0, 40.0]]), (240, 320))
    assert page.is_hidden("#dl-json") and "Done" not in page.inner_text("#status")
    assert page.evaluate("window.tracker.done") is None and page.evaluate("window.tracker.points.length") == len(points)

    page.click("#track")
    page.wait_for_function("window.tracker.job !== null")
    page.click("#stop")
    page.wait_for_function("window.tracker.cancelled || window.tracker.done || window.tracker.error")
    stopped = page.evaluate("window.tracker.cancelled")
    assert stopped is not None and stopped["frames"] < n, stopped
    assert "Stopped after" in page.inner_text("#status") and page.is_hidden("#stop") and page.is_hidden("#dl-video")


def test_browser_camera_recording_is_uploaded(page):
    """Chromium's fake camera (640x480 test pattern) recorded for 3 s with MediaRecorder, decoded by the server."""
    page.evaluate("window.tracker.video = null; window.tracker.error = null")
    page.click("#camera")
    page.wait_for_function("window.tracker.video || window.tracker.error", timeout=30_000)
    shown = page.evaluate("({video: window.tracker.video, error: window.tracker.error})")
    assert shown["error"] is None, shown["error"]
    assert (shown["video"]["width"], shown["video"]["height"]) == (640, 480)
    assert shown["video"]["container"] == "matroska" and shown["video"]["num_frames"] >= 10


def test_browser_dns_rebinding_and_cross_site_posts_are_refused(page, server, served_app, files):
    """A page of evil.example, its name resolved to 127.0.0.1, can neither read the server nor post to it."""
    import base64

    port = server.rsplit(":", 1)[1]
    evil = page.context.new_page()
    try:
        answer = evil.goto(f"http://evil.example:{port}/")  # the rebound name reaches this very server
        assert answer.status == 400 and "not served here" in answer.json()["error"]
        before = len(served_app.state.service.videos)
        clip = base64.b64encode(files["clip"].read_bytes()).decode()
        sent = evil.evaluate(
            """async ([target, clip]) => {
                const blob = new Blob([Uint8Array.from(atob(clip), (c) => c.charCodeAt(0))]);
                const form = new FormData();
                form.append("video", blob, "clip.mp4");
                const out = {};
                // Simple requests: sent without asking, their answers opaque to the page.
                const simple = [["plain", blob, { "Content-Type": "text/plain" }], ["form", form, {}]];
                for (const [name, body, headers] of simple) {
                    await fetch(`${target}/api/videos`, { method: "POST", mode: "no-cors", body, headers });
                    out[name] = "sent";
                }
                // A request that needs a preflight, which the server never grants.
                try {
                    await fetch(`${target}/api/videos`, {
                        method: "POST", body: blob, headers: { "Content-Type": "application/octet-stream" } });
                    out.preflighted = "answered";
                } catch (e) { out.preflighted = "blocked"; }
                return out;
            }""",
            [server, clip],
        )
        assert sent == {"plain": "sent", "form": "sent", "preflighted": "blocked"}
        assert len(served_app.state.service.videos) == before  # none of them was taken
    finally:
        evil.close()
