// One chat message on the page: its text as Markdown, the reasoning trace folded in a
// <details>, tool calls as name + arguments, and a line of facts (tokens, speed, how it ended).
// Only text nodes carry message text (see markdown.js).

import { renderMarkdown } from "./markdown.js";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** `node`'s child of class `name`, made (and put before `before`, if given) on first use. */
function part(node, name, tag, before = null) {
  let child = node.querySelector(`:scope > .${name}`);
  if (!child) {
    child = el(tag, name);
    node.insertBefore(child, before && node.querySelector(`:scope > .${before}`));
  }
  return child;
}

/** Tool-call arguments for reading: pretty JSON when they parse, else as sent. */
export function formatArguments(args) {
  try {
    return JSON.stringify(JSON.parse(args), null, 2);
  } catch {
    return args;
  }
}

function renderReasoning(node, msg) {
  if (!msg.reasoning) return;
  const details = part(node, "reasoning", "details", "content"); // folded unless the user opens it
  let summary = details.querySelector("summary");
  if (!summary) {
    summary = el("summary");
    details.append(summary, el("div", "reasoning-text"));
  }
  summary.textContent = msg.state === "streaming" && !msg.content && !msg.tool_calls ? "Thinking…" : "Reasoning";
  details.querySelector(".reasoning-text").textContent = msg.reasoning;
}

function renderToolCalls(node, msg) {
  if (!msg.tool_calls?.length) return;
  const box = part(node, "tool-calls", "div", "meta");
  box.replaceChildren(
    ...msg.tool_calls.map((call) => {
      const item = el("div", "tool-call");
      item.append(
        el("span", "tool-label", "tool call"),
        el("code", "tool-name", call.function.name),
        el("pre", "tool-args", formatArguments(call.function.arguments)),
      );
      return item;
    }),
  );
}

/** The facts under an answer: token count, decode speed, and how it ended if not normally. */
function facts(msg) {
  const out = [];
  const tokens = msg.usage?.completion_tokens;
  if (tokens) out.push(`${tokens} tokens`);
  if (tokens > 1 && msg.firstTokenAt && msg.endedAt > msg.firstTokenAt) {
    out.push(`${((tokens - 1) / ((msg.endedAt - msg.firstTokenAt) / 1000)).toFixed(1)} tokens/s`);
  }
  if (msg.finish_reason === "length") out.push("stopped at max_tokens");
  if (msg.state === "stopped") out.push("stopped");
  return out.join(" · ");
}

/** Bring `node` up to date with `msg` (called on every streamed chunk, so it updates in place). */
export function updateMessage(node, msg) {
  node.dataset.state = msg.state || "done";
  renderReasoning(node, msg);
  const content = part(node, "content", "div");
  if (msg.role === "user") content.textContent = msg.content;
  else content.replaceChildren(renderMarkdown(msg.content));
  content.hidden = !msg.content && msg.role !== "user" && msg.state !== "streaming"; // streaming: the cursor
  renderToolCalls(node, msg);
  const meta = part(node, "meta", "div");
  meta.textContent = msg.state === "error" ? `error: ${msg.error}` : facts(msg);
  meta.classList.toggle("error", msg.state === "error");
}

/** A new element for `msg`. */
export function messageElement(msg) {
  const node = el("article", "msg");
  node.dataset.role = msg.role;
  node.append(el("div", "who", msg.role === "user" ? "You" : "Assistant"));
  updateMessage(node, msg);
  return node;
}
