// Conversations and settings, kept in this browser's localStorage (the server stores nothing).

const CONVERSATIONS = "lfmkit.chat.conversations";
const CURRENT = "lfmkit.chat.current";
const SETTINGS = "lfmkit.chat.settings";

export const DEFAULT_SETTINGS = {
  apiKey: "",
  system: "",
  temperature: "",
  top_p: "",
  min_p: "",
  repetition_penalty: "",
  max_tokens: "",
  tools: "",
};

function read(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key));
    return value ?? fallback;
  } catch {
    return fallback; // unreadable (edited by hand, or from another version): start afresh
  }
}

/** Write `value` under `key`; false when the browser refuses (storage full or disabled). */
function write(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
    return true;
  } catch {
    return false;
  }
}

export function loadSettings() {
  return { ...DEFAULT_SETTINGS, ...read(SETTINGS, {}) };
}

export function saveSettings(settings) {
  return write(SETTINGS, settings);
}

/** `{conversations, current}`: the list (newest first) and the id of the open one (or null). */
export function loadConversations() {
  const list = read(CONVERSATIONS, []);
  const conversations = Array.isArray(list) ? list.filter((c) => c && Array.isArray(c.messages)) : [];
  const current = read(CURRENT, null);
  return { conversations, current: conversations.some((c) => c.id === current) ? current : null };
}

export function saveConversations(conversations, current) {
  return write(CONVERSATIONS, conversations) && write(CURRENT, current);
}

export function newConversation() {
  const id = globalThis.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random().toString(36).slice(2)}`;
  return { id, title: "New chat", updated: Date.now(), messages: [] };
}

/** A conversation's title: the start of its first message, on one line. */
export function titleFrom(text) {
  const line = text.replace(/\s+/g, " ").trim();
  return line.length > 48 ? `${line.slice(0, 47)}…` : line || "New chat";
}
