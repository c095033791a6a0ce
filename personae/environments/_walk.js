() => {
  const out = [];
  const seen = new Map();
  const clean = (s) => (s || "").replace(/\s+/g, " ").trim();
  const INTERACTIVE = new Set(["link", "button", "textbox", "checkbox", "radio", "combobox"]);
  const CONTAINERS = new Set([
    "navigation", "main", "form", "list", "listitem", "table", "row", "cell",
    "columnheader", "article", "paragraph",
  ]);
  const TAGS = {
    nav: "navigation", main: "main", form: "form", ul: "list", ol: "list", li: "listitem",
    table: "table", tr: "row", td: "cell", th: "columnheader", article: "article", img: "img",
  };
  const roleOf = (el) => {
    const tag = el.tagName.toLowerCase();
    const explicit = el.getAttribute("role");
    if (explicit) return explicit;
    if (tag === "a") return el.hasAttribute("href") ? "link" : null;
    if (tag === "button") return "button";
    if (tag === "input") {
      const type = (el.getAttribute("type") || "text").toLowerCase();
      if (type === "hidden") return "hidden";
      if (["submit", "button", "reset", "image"].includes(type)) return "button";
      if (type === "checkbox" || type === "radio") return type;
      return "textbox";
    }
    if (tag === "textarea") return "textbox";
    if (tag === "select") return "combobox";
    if (/^h[1-6]$/.test(tag)) return "heading";
    return TAGS[tag] || null;
  };
  const nameOf = (el, role) => {
    const aria = el.getAttribute("aria-label");
    if (aria) return clean(aria);
    if (role === "link" || role === "button" || role === "heading") {
      return clean(el.innerText || el.value || el.getAttribute("title"));
    }
    if (role === "img") return clean(el.getAttribute("alt"));
    if (el.labels && el.labels.length) return clean(el.labels[0].innerText);
    return clean(el.getAttribute("placeholder") || el.getAttribute("title") || el.name);
  };
  const keyOf = (el, role, name) => {
    const own = el.getAttribute("data-key");
    const base = (own || `${role}:${name}`.slice(0, 60)).replace(/[^A-Za-z0-9_:. -]/g, "_");
    const n = (seen.get(base) || 0) + 1;
    seen.set(base, n);
    return n > 1 ? `${base}#${n}` : base;
  };
  const hidden = (el) => {
    if (el.hidden) return true;
    const style = getComputedStyle(el);
    return style.display === "none" || style.visibility === "hidden";
  };
  const walk = (node, depth) => {
    for (const child of node.childNodes) {
      if (child.nodeType === Node.TEXT_NODE) {
        const text = clean(child.textContent);
        if (text) out.push({ depth, text: `text: ${text}` });
        continue;
      }
      if (child.nodeType !== Node.ELEMENT_NODE) continue;
      const el = child;
      const tag = el.tagName.toLowerCase();
      if (["script", "style", "template", "noscript", "label"].includes(tag) || hidden(el)) continue;
      const role = roleOf(el);
      if (role === "hidden") continue;
      if (INTERACTIVE.has(role)) {
        const name = nameOf(el, role);
        const key = keyOf(el, role, name);
        el.setAttribute("data-pk", key);
        const item = { depth, text: `${role} "${name}"`, key };
        if (role === "checkbox" || role === "radio") item.checked = el.checked;
        if (el.disabled) item.disabled = true;
        if (role === "textbox") item.value = el.value;
        if (role === "combobox") {
          item.value = el.selectedOptions.length ? clean(el.selectedOptions[0].textContent) : "";
          item.options = [...el.options].map((o) => clean(o.textContent));
        }
        out.push(item);
      } else if (role === "heading") {
        out.push({ depth, text: `heading "${nameOf(el, role)}" [level=${tag[1] || 2}]` });
      } else if (role === "img") {
        out.push({ depth, text: `img "${nameOf(el, role)}"` });
      } else if (tag === "pre") {
        out.push({ depth, text: "text:", block: el.innerText });
      } else if (CONTAINERS.has(role)) {
        const label = clean(el.getAttribute("aria-label"));
        const head = label ? `${role} "${label}"` : role;
        if (el.children.length === 0) {
          const text = clean(el.textContent);
          if (text || label) out.push({ depth, text: text ? `${head}: ${text}` : head });
        } else if (role === "paragraph") {
          walk(el, depth);
        } else {
          out.push({ depth, text: head });
          walk(el, depth + 1);
        }
      } else {
        walk(el, depth);
      }
    }
  };
  if (document.body) walk(document.body, 0);
  return out;
}
