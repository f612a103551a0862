"""The token-signing examples of docs/SECURITY.md are real.

Extracts the code blocks marked `herald-doc-example: python-sign` (and `node-sign`) from
docs/SECURITY.md, runs them as written to mint connection and channel tokens, and checks the
tokens against a release edge (`target/release/herald`, or $HERALD_BIN) started on a free loopback
port with an `[auth] hmac_secret` and a `subscribe = "token"` namespace — once without and once
with `[auth] audience`. Plain HTTP only: `/poll`, `/sse` and `/api/presence`.

Run: python3 -m pytest -q tests-deploy/test_security_doc.py
Needs PyJWT (tests-deploy/requirements.txt). Skips only when the edge binary is absent (build it
with `cargo build --release -p herald-edge`); the Node example is skipped with a message where
`node` or its `jsonwebtoken` package is not installed.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "SECURITY.md"
BINARY = Path(os.environ.get("HERALD_BIN", ROOT / "target" / "release" / "herald"))
SECRET = "docs-test-secret-0123456789-abcdefghijklmnop"
WAIT = 15.0

# What each example is asked to mint; printed as one JSON object by the appended driver.
PY_DRIVER = """
import json as _json
print(_json.dumps({
    "ann": connection_token("ann", info={"name": "Ann"}, channels=["granted:news"]),
    "bob": connection_token("bob"),
    "ann_private": channel_token("ann", "private:x"),
    "bob_private": channel_token("bob", "private:x"),
    "expired": connection_token("ann", ttl=-60),
}))
"""

JS_DRIVER = """
console.log(JSON.stringify({
  ann: connectionToken("ann", { info: { name: "Ann" }, channels: ["granted:news"] }),
  bob: connectionToken("bob"),
  ann_private: channelToken("ann", "private:x"),
  bob_private: channelToken("bob", "private:x"),
  expired: connectionToken("ann", { ttl: -60 }),
}));
"""


def example(marker, fence):
    """The code blocks of docs/SECURITY.md whose first line carries `herald-doc-example: marker`."""
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"^```" + fence + r"\n(.*?)^```", text, re.S | re.M)
    found = [b for b in blocks if b.lstrip().splitlines()[0].endswith(f"herald-doc-example: {marker}")]
    assert found, f"docs/SECURITY.md has no ```{fence} block marked herald-doc-example: {marker}"
    return "\n".join(found)


def signer_env(audience):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env["HERALD_JWT_SECRET"] = SECRET
    if audience:
        env["HERALD_AUDIENCE"] = audience
    return env


def mint_python(audience):
    code = example("python-sign", "python") + PY_DRIVER
    out = subprocess.run([sys.executable, "-c", code], env=signer_env(audience),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"the Python example failed:\n{out.stderr}"
    return json.loads(out.stdout)


def node_env(audience):
    env = signer_env(audience)
    paths = [str(ROOT / "node_modules")]
    npm = shutil.which("npm")
    if npm:
        r = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=30)
        if r.returncode == 0 and r.stdout.strip():
            paths.append(r.stdout.strip())
    if os.environ.get("NODE_PATH"):
        paths.append(os.environ["NODE_PATH"])
    env["NODE_PATH"] = os.pathsep.join(paths)
    return env


def mint_node(audience):
    node = shutil.which("node")
    if not node:
        pytest.skip("node is not installed: the Node example of docs/SECURITY.md is not run")
    env = node_env(audience)
    probe = subprocess.run([node, "-e", "require.resolve('jsonwebtoken')"], env=env,
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("the npm package jsonwebtoken is not installed (npm install jsonwebtoken): "
                    "the Node example of docs/SECURITY.md is not run")
    with tempfile.TemporaryDirectory() as d:
        script = Path(d) / "sign.js"
        script.write_text(example("node-sign", "js") + JS_DRIVER, encoding="utf-8")
        out = subprocess.run([node, str(script)], env=env, capture_output=True, text=True,
                             timeout=60)
    assert out.returncode == 0, f"the Node example failed:\n{out.stderr}"
    return json.loads(out.stdout)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Edge:
    def __init__(self, base, audience):
        self.base = base
        self.audience = audience

    def get(self, path, **query):
        """GET path?query → (status, parsed JSON body or None)."""
        url = f"{self.base}{path}?{urllib.parse.urlencode(query)}"
        try:
            with urllib.request.urlopen(url, timeout=WAIT) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body)
            except ValueError:
                return e.code, None


@pytest.fixture(scope="module", params=[None, "herald-docs"], ids=["no-audience", "audience"])
def edge(request):
    """A release edge with an HMAC secret and a `token` namespace, stopped at the end."""
    if not BINARY.exists():
        pytest.skip(f"{BINARY} is absent: build it with `cargo build --release -p herald-edge`")
    audience = request.param
    work = tempfile.TemporaryDirectory(prefix="herald-security-doc-")
    config = Path(work.name) / "herald.toml"
    lines = ["[auth]", f'hmac_secret = "{SECRET}"']
    if audience:
        lines.append(f'audience = "{audience}"')
    lines += ["", "[namespaces.private]", 'subscribe = "token"',
              "", "[namespaces.granted]", 'subscribe = "none"', ""]
    config.write_text("\n".join(lines), encoding="utf-8")
    port, metrics_port = free_port(), free_port()
    log = open(Path(work.name) / "edge.log", "w+b")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    proc = subprocess.Popen(
        [str(BINARY), "--listen", f"127.0.0.1:{port}", "--metrics-listen",
         f"127.0.0.1:{metrics_port}", "--node-id", "docs-test", "--config", str(config)],
        stdout=log, stderr=subprocess.STDOUT, env=env)

    def stop():
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        work.cleanup()

    request.addfinalizer(stop)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + WAIT
    while True:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"the edge exited with {proc.returncode}:\n{log.read().decode(errors='replace')}")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail("the edge did not answer /healthz in time")
        time.sleep(0.1)
    return Edge(base, audience)


@pytest.fixture(params=["python", "node"])
def tokens(request, edge):
    mint = mint_python if request.param == "python" else mint_node
    return mint(edge.audience)


def test_a_connection_token_opens_a_poll_and_none_or_an_expired_one_does_not(edge, tokens):
    status, body = edge.get("/poll", channel="lobby", timeout=0, token=tokens["bob"])
    assert status == 200, body
    assert body["messages"] == [] and body["cursor"], body
    status, body = edge.get("/poll", channel="lobby", timeout=0)
    assert (status, body["error"]["name"]) == (401, "unauthorized"), body
    status, body = edge.get("/poll", channel="lobby", timeout=0, token=tokens["expired"])
    assert (status, body["error"]["name"]) == (401, "token_expired"), body


def test_a_token_namespace_needs_the_channel_token(edge, tokens):
    status, body = edge.get("/poll", channel="private:x", timeout=0, token=tokens["ann"])
    assert (status, body["error"]["name"]) == (403, "permission_denied"), body
    status, body = edge.get("/poll", channel="private:x", timeout=0, token=tokens["ann"],
                            channel_token=tokens["ann_private"])
    assert status == 200, body
    # Another user's channel token does not fit this connection.
    status, body = edge.get("/poll", channel="private:x", timeout=0, token=tokens["ann"],
                            channel_token=tokens["bob_private"])
    assert (status, body["error"]["name"]) == (403, "permission_denied"), body


def test_the_channels_claim_and_info_reach_the_stream_and_presence(edge, tokens):
    # `granted` is closed to clients (subscribe = "none"): only the `channels` claim opens it.
    status, body = edge.get("/poll", channel="granted:news", timeout=0, token=tokens["bob"])
    assert status == 403, body
    status, body = edge.get("/poll", channel="granted:news", timeout=0, token=tokens["ann"])
    assert status == 200, body
    query = urllib.parse.urlencode({"channel": "lobby", "token": tokens["ann"]})
    with urllib.request.urlopen(f"{edge.base}/sse?{query}", timeout=WAIT) as stream:
        assert stream.status == 200
        event = None
        welcome = None
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: ") and event == "welcome":
                welcome = json.loads(line[len("data: "):])
                break
        assert welcome is not None, "no welcome event"
        assert welcome["user"] == "ann", welcome
        assert welcome["channels"] == ["lobby", "granted:news"], welcome
        # While the stream is open, Ann is in the channel's presence with her `info`
        # (the server API answers loopback peers when no API key is configured).
        deadline = time.monotonic() + WAIT
        while True:
            status, body = edge.get("/api/presence/lobby")
            assert status == 200, body
            ann = [c for c in body["clients"] if c["user"] == "ann"]
            if ann:
                break
            assert time.monotonic() < deadline, f"ann never appeared in presence: {body}"
            time.sleep(0.1)
        assert ann[0].get("info") == {"name": "Ann"}, ann


def test_the_node_example_is_valid_javascript():
    """Where the Node example cannot run (no jsonwebtoken), node can at least parse it."""
    node = shutil.which("node")
    if not node:
        pytest.skip("node is not installed: the Node example of docs/SECURITY.md is not checked")
    with tempfile.TemporaryDirectory() as d:
        script = Path(d) / "sign.js"
        script.write_text(example("node-sign", "js") + JS_DRIVER, encoding="utf-8")
        out = subprocess.run([node, "--check", str(script)], capture_output=True, text=True,
                             timeout=30)
    assert out.returncode == 0, f"the Node example does not parse:\n{out.stderr}"
