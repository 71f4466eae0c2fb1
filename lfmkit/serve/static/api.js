// The OpenAI-compatible API as the page uses it: the served model, a streamed chat completion,
// and folding the stream's deltas into one assistant message.

/** An error the server answered with (OpenAI's error shape), or a broken stream. */
export class ApiError extends Error {
  constructor(message, status = 0, type = "") {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = type;
  }
}

function headers(apiKey) {
  const h = { "Content-Type": "application/json" };
  if (apiKey) h.Authorization = `Bearer ${apiKey}`;
  return h;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  let type = "";
  try {
    const body = await response.json();
    message = body.error?.message || message;
    type = body.error?.type || "";
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(message, response.status, type);
}

/** The served model: `{id, max_model_len}` from GET /v1/models. */
export async function servedModel(apiKey) {
  const response = await fetch("/v1/models", { headers: headers(apiKey) });
  if (!response.ok) throw await failure(response);
  const [model] = (await response.json()).data;
  return model;
}

const SAMPLING = ["temperature", "top_p", "min_p", "repetition_penalty", "max_tokens"];

/** The tools setting parsed: a list (empty when the field is blank); throws on bad JSON. */
export function parseTools(text) {
  if (!text.trim()) return [];
  const tools = JSON.parse(text);
  if (!Array.isArray(tools)) throw new Error("tools must be a JSON list");
  return tools;
}

/** A conversation's messages as the API takes them (answers that failed empty are left out). */
export function apiMessages(messages, system) {
  const out = system.trim() ? [{ role: "system", content: system }] : [];
  for (const m of messages) {
    if (m.role === "user") {
      out.push({ role: "user", content: m.content });
    } else if (m.content || m.tool_calls?.length) {
      const msg = { role: "assistant", content: m.content || null };
      if (m.tool_calls?.length) {
        msg.tool_calls = m.tool_calls.map(({ id, type, function: f }) => ({ id, type, function: f }));
      }
      out.push(msg);
    }
  }
  return out;
}

/** The streamed /v1/chat/completions body for `messages` with the page's settings. */
export function chatRequest(model, messages, settings) {
  const body = {
    model,
    messages: apiMessages(messages, settings.system || ""),
    stream: true,
    stream_options: { include_usage: true },
  };
  for (const name of SAMPLING) {
    const value = String(settings[name] ?? "").trim();
    if (value !== "") body[name] = Number(value);
  }
  const tools = parseTools(settings.tools || "");
  if (tools.length) body.tools = tools;
  return body;
}

/** The parsed `data:` events of a server-sent-event stream, until `[DONE]`. */
export async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const data = event
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
  throw new ApiError("the stream ended before [DONE]");
}

/** Stream a chat completion: yields `chat.completion.chunk` objects; `signal` aborts the request. */
export async function* streamChat(body, apiKey, signal) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers(apiKey),
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await failure(response);
  for await (const event of sseEvents(response.body)) {
    if (event.error) throw new ApiError(event.error.message, 0, event.error.type);
    yield event;
  }
}

/** Fold one chunk into `message` ({content, reasoning, tool_calls, finish_reason, usage}). */
export function applyChunk(message, chunk) {
  if (chunk.usage) message.usage = chunk.usage;
  const choice = chunk.choices?.find((c) => c.index === 0);
  if (!choice) return;
  const delta = choice.delta || {};
  if (delta.content) message.content += delta.content;
  if (delta.reasoning_content) message.reasoning = (message.reasoning || "") + delta.reasoning_content;
  for (const call of delta.tool_calls || []) {
    message.tool_calls ??= [];
    const known = message.tool_calls[call.index];
    if (known) {
      known.function.arguments += call.function?.arguments || ""; // OpenAI-style partial arguments
    } else {
      message.tool_calls[call.index] = {
        id: call.id,
        type: call.type || "function",
        function: { name: call.function?.name || "", arguments: call.function?.arguments || "" },
      };
    }
  }
  if (choice.finish_reason) message.finish_reason = choice.finish_reason;
}
