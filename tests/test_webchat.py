"""The web chat page at `/` of `lfmkit serve`, used as a person uses it: headless Chromium
(Debian's `chromium` and `chromium-driver`) driven by Selenium, against a real `lfmkit serve`
process with an API key.

A tiny checkpoint is overfitted first (as in test_server_tools) to answer a greeting in plain
text, the weather question with a `<think>` trace and a tool call, and a third prompt with
Markdown, a `<script>` and an `<img onerror>` in its answer. Every answer the page shows is
compared with what the API gives for the same request.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_server_cli import _start
from test_server_tools import QUESTION, THOUGHT, TOOLS, _examples, _overfit

from lfmkit import LFM2
from lfmkit.text.tokenizer import Tokenizer

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # the browser tests skip (see `browser`); the others run
    webdriver = None

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

KEY = "s3cret-key"
GREETING, GREETING_ANSWER = "Hello! How are you today?", "I am fine, thank you."
HTML_PROMPT = "Tell me a story about a robot."
HTML_ANSWER = '**Careful:** <script>document.title="pwned"</script><img src=x onerror="document.title=1">'
WAIT = 120  # seconds: a hang guard only; every wait ends as soon as its condition holds


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`lfmkit serve` (one batch slot, API key) over the overfitted checkpoint: its URL."""
    from checkpoints import make_checkpoint

    root = tmp_path_factory.mktemp("webchat")
    path, _ = make_checkpoint(
        root / "model", layout="small", seed=2, with_tokenizer=True, hidden_size=64, intermediate_size=192
    )
    tok = Tokenizer.from_pretrained(path)

    def answer(question: str, text: str) -> tuple[list[int], list[int]]:
        prompt = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
        return tok.encode(prompt), tok.encode(text + "<|im_end|>")

    weather = _examples(tok)[0]  # the question with the tools -> <think>…</think> and the call
    examples = [weather, answer(GREETING, GREETING_ANSWER), answer(HTML_PROMPT, HTML_ANSWER)]
    model = LFM2.from_pretrained(path).train().requires_grad_(True)
    loss = _overfit(model, examples)  # one torch thread (conftest): fastest for tiny matrices
    assert loss < 0.05, f"overfitting did not converge (loss {loss:.3f})"
    model.eval().save_pretrained(str(path))
    (root / "key").write_text(KEY + "\n")
    proc, url = _start(path, "--api-key-file", str(root / "key"), "--max-concurrent", "1", "--max-model-len", "4096")
    try:
        yield url
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        assert "Traceback" not in out, out


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium; the tests that use it skip, saying why, where it is not installed."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    if webdriver is None:
        pytest.skip("needs selenium (in the test extra)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the driver's path is given, so Selenium Manager is skipped (it would download one)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(autouse=True)
def no_page_errors(request):
    """After each test that used the browser: no script errors or CSP violations in the console
    (failed requests, like the 401 before the key is entered, are the server's answers)."""
    yield
    driver = request.node.funcargs.get("browser")
    if driver is not None:
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert [e for e in errors if "Failed to load resource" not in e["message"]] == []


def _api(url: str, body: dict) -> dict:
    """The non-streamed chat completion for `body`: the oracle the page is compared with."""
    r = httpx.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=WAIT)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]


def _open(browser, url: str, settings: dict | None = None):
    """The page with empty storage (and `settings` stored, as if typed in an earlier visit)."""
    browser.get("about:blank")
    browser.execute_cdp_cmd("Storage.clearDataForOrigin", {"origin": url, "storageTypes": "local_storage"})
    browser.get(url)
    if settings is not None:
        browser.execute_script("localStorage.setItem('lfmkit.chat.settings', arguments[0])", json.dumps(settings))
        browser.refresh()  # with the key stored, the page finds the model at once
        _until(browser, lambda b: b.find_element(By.ID, "model").text.startswith("tiny"))


def _until(browser, condition, message: str = ""):
    return WebDriverWait(browser, WAIT, poll_frequency=0.05).until(condition, message)


def _say(browser, text: str):
    """Type `text` in the message box and press Send; the new answer's element."""
    answers = ".msg[data-role=assistant]"
    before = len(browser.find_elements(By.CSS_SELECTOR, answers))
    browser.find_element(By.ID, "input").send_keys(text)
    browser.find_element(By.ID, "send").click()
    return _until(browser, lambda b: b.find_elements(By.CSS_SELECTOR, answers)[before:])[0]


def _finished(browser, answer) -> str:
    _until(browser, lambda b: answer.get_attribute("data-state") != "streaming", "the answer did not end")
    return answer.get_attribute("data-state")


SPY = """
window.seen = [];
const fetch0 = window.fetch;
window.fetch = async (url, init = {}) => {
  const entry = {url: String(url), body: init.body ? JSON.parse(init.body) : null};
  window.seen.push(entry);
  try {
    const response = await fetch0(url, init);
    entry.status = response.status;
    entry.type = response.headers.get("content-type");
    return response;
  } catch (err) { entry.error = err.name; throw err; }
};
"""


def test_page_streams_the_answer_and_keeps_the_conversation(server, browser):
    """The user enters the key the page asks for, sets temperature 0, sends a message: the
    streamed answer shown equals the API's answer to the same request; it survives a reload."""
    _open(browser, server)
    banner = _until(browser, lambda b: b.find_element(By.ID, "banner"))
    _until(browser, lambda b: "API key" in banner.text)  # the server was started with a key
    assert browser.find_element(By.ID, "settings").is_displayed()
    browser.find_element(By.ID, "api-key").send_keys(KEY)
    browser.find_element(By.ID, "temperature").send_keys("0")  # moves focus: the key is checked
    _until(browser, lambda b: b.find_element(By.ID, "model").text.startswith("tiny"))
    assert not banner.is_displayed()
    assert browser.execute_script("return localStorage.getItem('lfmkit.chat.settings')").count(KEY) == 1
    browser.find_element(By.ID, "max_tokens").send_keys("32")
    browser.execute_script(SPY)

    answer = _say(browser, GREETING)
    expected = _api(
        server,
        {"model": "tiny", "messages": [{"role": "user", "content": GREETING}], "temperature": 0, "max_tokens": 32},
    )["content"]
    assert expected == GREETING_ANSWER  # the model learned it: a plain sentence, no Markdown
    _until(browser, lambda b: answer.find_element(By.CLASS_NAME, "content").text == expected, "answer not shown")
    assert _finished(browser, answer) == "done"
    [request] = [s for s in browser.execute_script("return window.seen") if s["url"].endswith("/chat/completions")]
    assert request["body"]["stream"] is True and request["type"].startswith("text/event-stream")
    assert request["body"]["temperature"] == 0 and request["body"]["max_tokens"] == 32
    assert "tokens" in answer.find_element(By.CLASS_NAME, "meta").text

    browser.refresh()
    _until(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, ".msg")) == 2, "the conversation was not kept")
    user, answer = browser.find_elements(By.CSS_SELECTOR, ".msg")
    assert user.find_element(By.CLASS_NAME, "content").text == GREETING
    assert answer.find_element(By.CLASS_NAME, "content").text == expected
    [item] = browser.find_elements(By.CSS_SELECTOR, "#conversations li")
    assert item.text.startswith(GREETING[:20]) and "current" in item.get_attribute("class")


def test_reasoning_is_folded_and_tool_calls_are_shown(server, browser):
    sampling = {"temperature": 0, "min_p": 0, "repetition_penalty": 1, "max_tokens": 64}
    settings = {"apiKey": KEY, "tools": json.dumps(TOOLS), **{k: str(v) for k, v in sampling.items()}}
    _open(browser, server, settings)
    answer = _say(browser, QUESTION[0]["content"])
    assert _finished(browser, answer) == "done"
    expected = _api(server, {"model": "tiny", "messages": QUESTION, "tools": TOOLS, **sampling})
    assert expected["reasoning_content"] == THOUGHT and expected["tool_calls"]

    details = answer.find_element(By.CSS_SELECTOR, "details.reasoning")
    assert details.get_property("open") is False  # folded
    assert details.find_element(By.TAG_NAME, "summary").text == "Reasoning"
    details.find_element(By.TAG_NAME, "summary").click()
    _until(browser, lambda b: details.get_property("open"))
    assert details.find_element(By.CLASS_NAME, "reasoning-text").text == expected["reasoning_content"]

    shown = [
        (c.find_element(By.CLASS_NAME, "tool-name").text, json.loads(c.find_element(By.CLASS_NAME, "tool-args").text))
        for c in answer.find_elements(By.CLASS_NAME, "tool-call")
    ]
    want = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in expected["tool_calls"]]
    assert shown == want == [("get_weather", {"location": "Paris"})]
    assert not answer.find_element(By.CLASS_NAME, "content").is_displayed()  # no text besides the call

    # the call goes back to the server with the next message (as the assistant's tool_calls)
    browser.execute_script(SPY)
    _finished(browser, _say(browser, "Thanks"))
    [request] = [s for s in browser.execute_script("return window.seen") if s["url"].endswith("/chat/completions")]
    sent = request["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["tool_calls"][0]["function"]["name"] == "get_weather" and "reasoning_content" not in sent[1]


def test_html_in_model_output_is_shown_as_text(server, browser):
    """Model output is never HTML: `<script>` and `<img onerror>` come out as characters,
    while streaming and when the stored conversation is shown again; Markdown still renders."""
    _open(browser, server, {"apiKey": KEY, "temperature": "0"})
    answer = _say(browser, HTML_PROMPT)
    assert _finished(browser, answer) == "done"
    expected = _api(
        server, {"model": "tiny", "messages": [{"role": "user", "content": HTML_PROMPT}], "temperature": 0}
    )["content"]
    assert expected == HTML_ANSWER
    for _ in range(2):  # as streamed, then after a reload (rendered from localStorage)
        answer = browser.find_elements(By.CSS_SELECTOR, ".msg[data-role=assistant]")[-1]
        content = answer.find_element(By.CLASS_NAME, "content")
        assert content.text == expected.replace("**", "")
        assert content.find_element(By.TAG_NAME, "strong").text == "Careful:"
        assert browser.find_elements(By.CSS_SELECTOR, "#messages script, #messages img") == []
        assert browser.title == "lfmkit chat"
        browser.refresh()
        _until(browser, lambda b: b.find_elements(By.CSS_SELECTOR, ".msg[data-role=assistant]"))


def test_a_refused_request_shows_the_servers_message(server, browser):
    _open(browser, server, {"apiKey": KEY, "max_tokens": "0"})
    answer = _say(browser, GREETING)
    assert _finished(browser, answer) == "error"
    message = httpx.post(
        server + "/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": GREETING}], "max_tokens": 0, "stream": True},
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()["error"]["message"]
    assert "max_tokens" in message
    assert answer.find_element(By.CLASS_NAME, "meta").text == f"error: {message}"
    browser.find_element(By.ID, "settings-toggle").click()  # the user fixes the setting and asks again
    browser.find_element(By.ID, "max_tokens").send_keys(Keys.BACKSPACE)
    browser.execute_script(SPY)
    assert _finished(browser, _say(browser, GREETING)) == "done"
    [request] = [s for s in browser.execute_script("return window.seen") if s["url"].endswith("/chat/completions")]
    assert "max_tokens" not in request["body"]
    assert [m["role"] for m in request["body"]["messages"]] == ["user", "user"]  # the failed answer left out


def test_stop_aborts_the_request(server, browser):
    """Stop while the answer waits for the server's only batch slot: the fetch is aborted, the
    answer is marked stopped, Send is back, and the server ends up idle."""
    headers = {"Authorization": f"Bearer {KEY}"}
    opened, done = threading.Event(), threading.Event()
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 3000, "ignore_eos": True, "stream": True}

    def occupy():  # holds the slot until the test closes the stream
        with httpx.stream("POST", server + "/v1/completions", json=body, headers=headers, timeout=WAIT) as r:
            for _ in r.iter_lines():
                opened.set()
                if done.is_set():
                    return

    worker = threading.Thread(target=occupy, daemon=True)
    worker.start()
    try:
        assert opened.wait(WAIT)
        _open(browser, server, {"apiKey": KEY})
        browser.execute_script(SPY)
        answer = _say(browser, GREETING)
        stop = browser.find_element(By.ID, "stop")
        _until(browser, lambda b: stop.is_displayed())
        _until(browser, lambda b: httpx.get(server + "/health").json()["queued"] == 1, "the request was not queued")
        stop.click()
        assert _finished(browser, answer) == "stopped"
        assert browser.find_element(By.ID, "send").is_displayed() and not stop.is_displayed()
        assert "stopped" in answer.find_element(By.CLASS_NAME, "meta").text
        [request] = [s for s in browser.execute_script("return window.seen") if s["url"].endswith("/chat/completions")]
        assert request["status"] == 200  # the stream had started; reading it was aborted
    finally:
        done.set()
        worker.join(WAIT)
    _until(browser, lambda b: _idle(server), "the server did not end the requests")


def _idle(url: str) -> bool:
    health = httpx.get(url + "/health").json()
    return health["running"] == 0 and health["queued"] == 0


def test_page_and_files_are_served_by_the_package(server):
    """`/` and its files come from the package, open (no key needed), with a strict CSP."""
    page = httpx.get(server + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    static = Path(__file__).parents[1] / "lfmkit" / "serve" / "static"
    for name in ("app.js", "api.js", "markdown.js", "store.js", "view.js", "style.css"):
        r = httpx.get(f"{server}/static/{name}")
        assert r.status_code == 200 and r.content == (static / name).read_bytes(), name
        assert r.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript", "text/css")
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from another origin
    missing = httpx.get(server + "/static/nope.js")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_conversations_new_switch_delete(server, browser):
    """New chat starts an empty conversation; the list (newest first) switches and deletes
    them; a second tab sees the list, and its changes reach the first tab."""
    _open(browser, server, {"apiKey": KEY, "temperature": "0"})

    def items():
        return browser.find_elements(By.CSS_SELECTOR, "#conversations li")

    def shown():
        return [m.find_element(By.CLASS_NAME, "content").text for m in browser.find_elements(By.CLASS_NAME, "msg")]

    assert _finished(browser, _say(browser, GREETING)) == "done"
    browser.find_element(By.ID, "new-chat").click()
    _until(browser, lambda b: shown() == [] and b.find_element(By.ID, "empty").is_displayed())
    assert _finished(browser, _say(browser, HTML_PROMPT)) == "done"
    assert [i.find_element(By.CLASS_NAME, "open").text for i in items()] == [HTML_PROMPT, GREETING]
    items()[1].find_element(By.CLASS_NAME, "open").click()  # back to the first conversation
    _until(browser, lambda b: shown() == [GREETING, GREETING_ANSWER])

    first_tab = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(server)
    _until(browser, lambda b: len(items()) == 2 and shown() == [GREETING, GREETING_ANSWER])
    ActionChains(browser).move_to_element(items()[0]).perform()  # the × shows on hover
    items()[0].find_element(By.CLASS_NAME, "delete").click()  # delete the other conversation
    _until(browser, lambda b: len(items()) == 1)
    browser.close()
    browser.switch_to.window(first_tab)
    _until(browser, lambda b: len(items()) == 1, "the first tab did not see the deletion")
    assert shown() == [GREETING, GREETING_ANSWER]

    browser.refresh()
    _until(browser, lambda b: shown() == [GREETING, GREETING_ANSWER] and len(items()) == 1)
    items()[0].find_element(By.CLASS_NAME, "delete").click()  # the open one
    _until(browser, lambda b: items() == [] and shown() == [])
    browser.refresh()
    _until(browser, lambda b: b.find_element(By.ID, "empty").is_displayed())
    assert items() == [] and shown() == []


MARKDOWN = """# Title
Some **bold**, *italic*, `a <b> code`, [a link](https://example.org/x) and [bad](javascript:alert(1)).

- one
- two **2**

1. first
2. second

> quoted

```js
if (a < b) { document.write("<b>") }
```
---
tail https://example.org."""
RENDERED = (
    "<h3>Title</h3>"
    '<p>Some <strong>bold</strong>, <em>italic</em>, <code>a &lt;b&gt; code</code>, <a href="https://example.org/x" '
    'rel="noopener noreferrer" target="_blank">a link</a> and [bad](javascript:alert(1)).</p>'
    "<ul><li>one</li><li>two <strong>2</strong></li></ul>"
    '<ol start="1"><li>first</li><li>second</li></ol>'
    "<blockquote><p>quoted</p></blockquote>"
    '<pre><code class="language-js">if (a &lt; b) { document.write("&lt;b&gt;") }</code></pre>'
    "<hr>"
    '<p>tail <a href="https://example.org" rel="noopener noreferrer" target="_blank">https://example.org</a>.</p>'
)
RENDER = """
const [text, done] = arguments;
import("/static/markdown.js").then(({renderMarkdown}) => {
  const box = document.createElement("div");
  box.append(renderMarkdown(text));
  done(box.innerHTML);
});
"""


def test_markdown_rendering(server, browser):
    _open(browser, server)
    assert browser.execute_async_script(RENDER, MARKDOWN) == RENDERED


SAFE_TAGS = {
    "p",
    "br",
    "strong",
    "em",
    "code",
    "pre",
    "a",
    "h3",
    "h4",
    "h5",
    "h6",
    "ul",
    "ol",
    "li",
    "blockquote",
    "hr",
}
SAFE_ATTRIBUTES = re.compile(
    r' (href="https?://[^"]*"|rel="noopener noreferrer"|target="_blank"|class="language-[\w+#.-]*"|start="\d+")'
)
PIECES = list("ab <>&\"'=/\n*_`#->[]()1.:") + ["http://", "https://", "script", "img", "onerror", "```", "**"]
MARKUP = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=MARKUP)
def test_markdown_makes_only_safe_elements(server, browser, text):
    """Any text: only the renderer's own tags and attributes come out; `<` is never a tag."""
    if not browser.current_url.startswith(server):
        _open(browser, server)
    html = browser.execute_async_script(RENDER, text)
    tags = set(re.findall(r"<([a-z0-9]+)", html))
    assert tags <= SAFE_TAGS, html
    for tag in re.findall(r"<[a-z0-9]+([^>]*)>", html):
        assert SAFE_ATTRIBUTES.sub("", tag) == "", html
