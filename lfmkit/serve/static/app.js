// The chat page: conversations in the sidebar, the open one in the middle, settings on the
// right. A message is sent as a streamed /v1/chat/completions request; Stop aborts it.

import { ApiError, applyChunk, chatRequest, parseTools, servedModel, streamChat } from "./api.js";
import { loadConversations, loadSettings, newConversation, saveConversations, saveSettings, titleFrom } from "./store.js";
import { messageElement, updateMessage } from "./view.js";

const $ = (id) => document.getElementById(id);
const ui = {
  list: $("conversations"),
  messages: $("messages"),
  empty: $("empty"),
  input: $("input"),
  send: $("send"),
  stop: $("stop"),
  model: $("model"),
  banner: $("banner"),
  settings: $("settings"),
  settingsToggle: $("settings-toggle"),
  toolsError: $("tools-error"),
};
// each setting and the id of its field in the settings panel
const FIELDS = {
  apiKey: "api-key",
  system: "system",
  temperature: "temperature",
  top_p: "top_p",
  min_p: "min_p",
  repetition_penalty: "repetition_penalty",
  max_tokens: "max_tokens",
  tools: "tools",
};

const state = {
  conversations: [], // newest first (see reload)
  current: null, // the open conversation's id
  settings: loadSettings(),
  model: null, // {id, max_model_len} once /v1/models answered
  controller: null, // the AbortController of the running request
  elements: new Map(), // message object -> its element, for the open conversation
};

function currentConversation() {
  return state.conversations.find((c) => c.id === state.current) || null;
}

function persist() {
  if (!saveConversations(state.conversations, state.current)) {
    showBanner("This browser refused to store the conversation (storage full or disabled).");
  }
}

function showBanner(text) {
  ui.banner.textContent = text;
  ui.banner.hidden = !text;
}

// ---- rendering ------------------------------------------------------------------------

function renderList() {
  ui.list.replaceChildren(
    ...state.conversations.map((c) => {
      const item = document.createElement("li");
      item.classList.toggle("current", c.id === state.current);
      const open = document.createElement("button");
      open.type = "button";
      open.className = "open";
      open.textContent = c.title;
      open.title = c.title;
      open.addEventListener("click", () => openConversation(c.id));
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "delete";
      remove.textContent = "×";
      remove.title = remove.ariaLabel = `Delete “${c.title}”`;
      remove.addEventListener("click", () => deleteConversation(c.id));
      item.append(open, remove);
      return item;
    }),
  );
}

function nearBottom() {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function renderConversation() {
  state.elements.clear();
  const conv = currentConversation();
  const nodes = (conv?.messages || []).map((msg) => {
    const node = messageElement(msg);
    state.elements.set(msg, node);
    return node;
  });
  ui.messages.replaceChildren(ui.empty, ...nodes);
  ui.empty.hidden = nodes.length > 0;
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

let pending = new Set();
let savedAt = 0;
/** Re-render `msg` at the next frame (many chunks can arrive per frame); while an answer
 * streams, store it about once a second, so a reload or a closed tab keeps what came. */
function scheduleUpdate(msg) {
  if (!pending.size) {
    requestAnimationFrame(() => {
      const stick = nearBottom();
      for (const m of pending) {
        const node = state.elements.get(m);
        if (node) updateMessage(node, m);
      }
      pending = new Set();
      if (stick) ui.messages.scrollTop = ui.messages.scrollHeight;
      if (state.controller && Date.now() - savedAt > 1000) {
        savedAt = Date.now();
        persist();
      }
    });
  }
  pending.add(msg);
}

function setBusy(busy) {
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
}

// ---- conversations --------------------------------------------------------------------

function openConversation(id) {
  document.body.classList.remove("show-sidebar");
  state.current = id;
  persist();
  renderList();
  renderConversation();
  ui.input.focus();
}

function deleteConversation(id) {
  const conv = state.conversations.find((c) => c.id === id);
  if (state.controller && conv?.messages.some((m) => m.state === "streaming")) state.controller.abort();
  state.conversations = state.conversations.filter((c) => c.id !== id);
  if (state.current === id) state.current = state.conversations[0]?.id ?? null;
  persist();
  renderList();
  renderConversation();
}

// ---- the server -----------------------------------------------------------------------

async function connect() {
  try {
    state.model = await servedModel(state.settings.apiKey);
    ui.model.textContent = `${state.model.id} · ${state.model.max_model_len}-token context`;
    showBanner("");
  } catch (err) {
    state.model = null;
    ui.model.textContent = "not connected";
    if (err instanceof ApiError && err.status === 401) {
      showBanner("This server needs an API key: enter it in Settings.");
      toggleSettings(true);
      $("api-key").focus();
    } else {
      showBanner(`Cannot reach the server: ${err.message}`);
    }
  }
  return state.model;
}

async function send(text) {
  if (state.controller || !text.trim()) return;
  try {
    parseTools(state.settings.tools);
  } catch (err) {
    toggleSettings(true);
    showBanner(`The tools setting is not valid JSON: ${err.message}`);
    return;
  }
  if (!state.model && !(await connect())) return;
  let conv = currentConversation();
  if (!conv) {
    conv = newConversation();
    state.conversations.unshift(conv);
    state.current = conv.id;
  }
  if (!conv.messages.length) conv.title = titleFrom(text);
  conv.messages.push({ role: "user", content: text });
  const body = chatRequest(state.model.id, conv.messages, state.settings);
  const answer = { role: "assistant", content: "", state: "streaming" };
  conv.messages.push(answer);
  conv.updated = Date.now();
  state.conversations = [conv, ...state.conversations.filter((c) => c !== conv)];
  ui.input.value = "";
  persist();
  renderList();
  renderConversation();
  await stream(body, answer);
  conv.updated = Date.now();
  persist();
}

/** Run the request for `answer`, folding the chunks into it; it ends done, stopped or failed. */
async function stream(body, answer) {
  state.controller = new AbortController();
  setBusy(true);
  answer.startedAt = Date.now();
  try {
    for await (const chunk of streamChat(body, state.settings.apiKey, state.controller.signal)) {
      applyChunk(answer, chunk);
      if (!answer.firstTokenAt && (answer.content || answer.reasoning || answer.tool_calls)) {
        answer.firstTokenAt = Date.now();
      }
      scheduleUpdate(answer);
    }
    answer.state = "done";
  } catch (err) {
    if (err.name === "AbortError") {
      answer.state = "stopped";
    } else {
      answer.state = "error";
      answer.error = err.message;
      if (err instanceof ApiError && err.status === 401) connect();
    }
  } finally {
    answer.endedAt = Date.now();
    state.controller = null;
    setBusy(false);
    scheduleUpdate(answer);
  }
}

// ---- settings -------------------------------------------------------------------------

function toggleSettings(open = ui.settings.hidden) {
  ui.settings.hidden = !open;
  ui.settingsToggle.setAttribute("aria-expanded", String(open));
}

function checkTools() {
  try {
    parseTools(state.settings.tools);
    ui.toolsError.hidden = true;
  } catch (err) {
    ui.toolsError.textContent = `not valid: ${err.message}`;
    ui.toolsError.hidden = false;
  }
}

function bindSettings() {
  for (const [key, id] of Object.entries(FIELDS)) {
    const field = $(id);
    field.value = state.settings[key];
    field.addEventListener("input", () => {
      state.settings[key] = field.value;
      saveSettings(state.settings);
      if (key === "tools") checkTools();
    });
  }
  $("api-key").addEventListener("change", connect);
  ui.settingsToggle.addEventListener("click", () => toggleSettings());
  checkTools();
}

/** Show the conversations as stored; `current` stays open if it still exists (another tab
 * may have changed the list). */
function reload(current = null) {
  const stored = loadConversations();
  state.conversations = stored.conversations;
  state.current = state.conversations.some((c) => c.id === current) ? current : stored.current;
  renderList();
  renderConversation();
}

// ---- start ----------------------------------------------------------------------------

function start() {
  bindSettings();
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send(ui.input.value);
  });
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send(ui.input.value);
    }
  });
  ui.stop.addEventListener("click", () => state.controller?.abort());
  $("new-chat").addEventListener("click", () => openConversation(null));
  $("chats-toggle").addEventListener("click", () => document.body.classList.toggle("show-sidebar"));
  document.querySelector("main").addEventListener("click", (event) => {
    if (!event.target.closest("#chats-toggle")) document.body.classList.remove("show-sidebar"); // narrow screens
  });
  window.addEventListener("storage", (event) => {
    if (event.key !== null && !event.key.startsWith("lfmkit.chat.conversations")) return;
    if (!state.controller) reload(state.current); // another tab changed the conversations
  });
  reload();
  for (const msg of state.conversations.flatMap((c) => c.messages)) {
    if (msg.state === "streaming") msg.state = "stopped"; // its page was closed mid-answer
  }
  renderConversation();
  connect();
  ui.input.focus();
}

start();
