// A small Markdown renderer that builds DOM nodes, never HTML strings.
//
// Model output is untrusted: every piece of it reaches the page as a text node
// (`textContent`, `createTextNode`), so `<script>` or `<img onerror=…>` in an answer is shown
// as the characters it is. Links are made only for http(s) URLs. Covered: fenced code blocks
// (an unclosed fence, as while streaming, runs to the end), headings, lists, block quotes,
// horizontal rules, paragraphs with line breaks, and inline code, bold, italic and links.

const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;

// One alternative per inline form, tried left to right; the first match in the text wins.
const INLINE = new RegExp(
  [
    /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/, // 1, 2: code
    /\*\*(?=\S)([\s\S]*?\S)\*\*/, // 3: bold
    /(?<!\w)__(?=\S)([\s\S]*?\S)__(?!\w)/, // 4: bold
    /\*([^\s*](?:[\s\S]*?[^\s*])?)\*/, // 5: italic
    /(?<!\w)_([^\s_](?:[\s\S]*?[^\s_])?)_(?!\w)/, // 6: italic
    /\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/, // 7, 8: link
    /(https?:\/\/[^\s<>()]*[^\s<>().,;:!?'"])/, // 9: bare URL
  ]
    .map((r) => r.source)
    .join("|"),
  "g",
);

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

function link(href, text) {
  const a = el("a");
  a.href = href;
  a.rel = "noopener noreferrer";
  a.target = "_blank";
  a.textContent = text;
  return a;
}

/** Append `text` to `parent` with inline Markdown (code, bold, italic, links) as elements. */
export function renderInline(text, parent) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) parent.append(text.slice(last, m.index));
    if (m[2] !== undefined) {
      const code = el("code");
      code.textContent = m[2].length > 2 && m[2].startsWith(" ") && m[2].endsWith(" ") ? m[2].slice(1, -1) : m[2];
      parent.append(code);
    } else if (m[3] !== undefined || m[4] !== undefined) {
      const strong = el("strong");
      renderInline(m[3] ?? m[4], strong);
      parent.append(strong);
    } else if (m[5] !== undefined || m[6] !== undefined) {
      const em = el("em");
      renderInline(m[5] ?? m[6], em);
      parent.append(em);
    } else if (m[7] !== undefined) {
      parent.append(link(m[8], m[7]));
    } else {
      parent.append(link(m[9], m[9]));
    }
    last = m.index + m[0].length;
  }
  if (last < text.length) parent.append(text.slice(last));
}

function paragraph(lines) {
  const p = el("p");
  lines.forEach((line, i) => {
    if (i) p.append(el("br"));
    renderInline(line, p);
  });
  return p;
}

function codeBlock(lines, language) {
  const pre = el("pre");
  const code = el("code", language ? `language-${language}` : "");
  code.textContent = lines.join("\n");
  pre.append(code);
  return pre;
}

/** Parse the list starting at `lines[start]`: its element and the index after it. */
function list(lines, start) {
  const ordered = /\d/.test(ITEM.exec(lines[start])[2]);
  const node = el(ordered ? "ol" : "ul");
  if (ordered) node.start = parseInt(ITEM.exec(lines[start])[2], 10);
  let item = null;
  let i = start;
  for (; i < lines.length; i++) {
    const m = ITEM.exec(lines[i]);
    if (m && /\d/.test(m[2]) === ordered) {
      item = el("li");
      renderInline(m[3], item);
      node.append(item);
    } else if (lines[i].trim() && /^\s+/.test(lines[i]) && item) {
      item.append(el("br")); // an indented line continues the item
      renderInline(lines[i].trim(), item);
    } else {
      break;
    }
  }
  return [node, i];
}

/** A DocumentFragment with `text` rendered as Markdown; every character of `text` stays text. */
export function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  let para = [];
  const flush = () => {
    if (para.length) out.append(paragraph(para));
    para = [];
  };
  for (let i = 0; i < lines.length; ) {
    const line = lines[i];
    let m;
    if ((m = FENCE.exec(line))) {
      flush();
      const fence = m[1];
      const body = [];
      for (i++; i < lines.length && !lines[i].trim().startsWith(fence); i++) body.push(lines[i]);
      out.append(codeBlock(body, m[2]));
      i++; // the closing fence
    } else if ((m = HEADING.exec(line))) {
      flush();
      const h = el(`h${Math.min(6, m[1].length + 2)}`);
      renderInline(m[2], h);
      out.append(h);
      i++;
    } else if (RULE.test(line)) {
      flush();
      out.append(el("hr"));
      i++;
    } else if (QUOTE.test(line)) {
      flush();
      const body = [];
      for (; i < lines.length && (m = QUOTE.exec(lines[i])); i++) body.push(m[1]);
      const quote = el("blockquote");
      quote.append(renderMarkdown(body.join("\n")));
      out.append(quote);
    } else if (ITEM.test(line)) {
      flush();
      const [node, next] = list(lines, i);
      out.append(node);
      i = next;
    } else if (!line.trim()) {
      flush();
      i++;
    } else {
      para.push(line);
      i++;
    }
  }
  flush();
  return out;
}
