"use strict";
(function () {
  const D = JSON.parse(document.getElementById("rekey-data").textContent);
  const R = D.report, P = D.plan;
  const CATS = {
    reconnaissance: ["Reconnaissance", "var(--recon)"],
    privilege_escalation: ["Privilege escalation", "var(--privesc)"],
    persistence: ["Persistence", "var(--persist)"],
    defense_evasion: ["Defense evasion", "var(--evasion)"],
    exfiltration: ["Credential & data access", "var(--exfil)"],
    account_level: ["Account level", "var(--account)"],
    ses_abuse: ["SES abuse", "var(--ses)"],
    other: ["Other", "var(--other)"]
  };
  const SEV = { critical: "#b91c1c", high: "#ea580c", medium: "#ca8a04", low: "#2563eb", info: "#64748b" };
  const KEYC = ["#334155", "#7c3aed", "#0891b2", "#be185d", "#4d7c0f", "#b45309"];

  // Every string from the data goes through text nodes or attribute values, never markup.
  function h(tag, props) {
    const e = document.createElement(tag);
    if (props) for (const k of Object.keys(props)) {
      const v = props[k];
      if (v === undefined || v === null) continue;
      if (k === "class") e.className = v;
      else if (k === "style") e.style.cssText = v;
      else if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, String(v));
    }
    for (let i = 2; i < arguments.length; i++) add(e, arguments[i]);
    return e;
  }
  function add(e, k) {
    if (k === undefined || k === null || k === false) return;
    if (Array.isArray(k)) { k.forEach(function (x) { add(e, x); }); return; }
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  function short(k) { return k && k.length > 12 ? k.slice(0, 4) + "\u2026" + k.slice(-4) : (k || "?"); }
  function ms(t) { const v = Date.parse(t); return isNaN(v) ? null : v; }
  function hms(t) { const v = ms(t); return v === null ? String(t) : new Date(v).toISOString().slice(11, 19); }
  function day(t) { const v = ms(t); return v === null ? "" : new Date(v).toISOString().slice(0, 10); }
  function dur(s) {
    s = Math.round(s);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.round(s / 60) + " min";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.round((s % 86400) / 3600) + " h";
  }
  function svc(ev) { return String(ev.event_source || "").replace(/\.amazonaws\.com$/, ""); }
  function cats(ev) { return ev.categories && ev.categories.length ? ev.categories : ["other"]; }
  function catColor(c) { return (CATS[c] || CATS.other)[1]; }
  function catName(c) { return (CATS[c] || [c])[0]; }
  function chainKey(ev) { return (ev.chain && ev.chain.length ? ev.chain : [ev.signer || "?"]).join(">"); }
  function flash(id) {
    const el = document.getElementById(id);
    if (!el) return;
    el.scrollIntoView({ block: "center" });
    el.classList.add("hl");
    setTimeout(function () { el.classList.remove("hl"); }, 1800);
  }

  const app = document.getElementById("app");
  const events = R.timeline.map(function (e, i) { return { e: e, i: i, t: ms(e.time) }; });
  events.sort(function (a, b) {
    if (a.t !== null && b.t !== null && a.t !== b.t) return a.t - b.t;
    if (a.t === null && b.t !== null) return 1;
    if (b.t === null && a.t !== null) return -1;
    return a.i - b.i;
  });
  const allowed = new Set((R.fence && R.fence.allowed || []).map(function (s) { return s.value; }));
  const derived = {};
  (R.derived_keys || []).forEach(function (d) { derived[d.key] = d; });
  const evidenceOf = {};
  R.findings.forEach(function (f) { f.evidence.forEach(function (id) { (evidenceOf[id] = evidenceOf[id] || []).push(f); }); });

  // Header.
  const sev = R.severity;
  const o = R.owner || {};
  const ownerText = o.is_root ? "root user" : (o.user || o.arn || "unknown owner");
  const meta = h("div", { class: "meta" },
    h("span", null, h("b", null, "owner"), ownerText),
    o.arn ? h("span", { class: "mono" }, o.arn) : null,
    o.account ? h("span", null, h("b", null, "account"), o.account) : null,
    h("span", null, h("b", null, "key status"), o.key_status || "unknown"),
    h("span", null, h("b", null, "window"), R.window_start + " \u2192 " + R.window_end),
    h("span", null, h("b", null, "report"), R.generated_at));
  const header = h("header", { class: "top" },
    h("div", { class: "row" },
      h("div", { class: "badge-sev sev-" + sev }, h("span", { class: "p" }, D.priority), h("span", { class: "s" }, sev)),
      h("div", { style: "flex:1;min-width:0" }, h("h1", null, "Leaked access key ", h("code", null, R.access_key_id)), meta)));
  if (o.is_root) {
    header.append(h("div", { class: "rootbanner" },
      h("strong", null, "This is the account's root key: a P1 incident. "),
      "Root can't be restrained by IAM policies. Rotate it now (delete it unless something truly needs one), audit all root activity for the last 30+ days, and contact AWS Security right away."));
  }
  if ((o.quarantine_policies || []).length) {
    header.append(h("div", { class: "meta" }, h("span", null, h("b", null, "AWS quarantine policy"), o.quarantine_policies.join(", "))));
  }
  app.append(header);
  const main = h("main");
  app.append(main);

  // Numbers at a glance.
  const failedN = events.filter(function (x) { return x.e.failed; }).length;
  const presentN = R.findings.filter(function (f) { return f.still_present === true; }).length;
  const ips = [];
  events.forEach(function (x) { const ip = x.e.source_ip; if (ip && !allowed.has(ip) && ips.indexOf(ip) < 0) ips.push(ip); });
  function stat(n, l, alert) { return h("div", { class: "stat" + (alert ? " alert" : "") }, h("div", { class: "n" }, n), h("div", { class: "l" }, l)); }
  main.append(h("div", { class: "stats" },
    stat(events.length, "events (" + failedN + " failed)"),
    stat(R.derived_keys.length, "keys minted from it", R.derived_keys.length > 0),
    stat(R.findings.length, "findings"),
    stat(presentN, "still present", presentN > 0),
    stat(R.blind_spots.length, "blind spots", R.blind_spots.length > 0),
    stat(ips.length, "suspect source IPs", ips.length > 0),
    stat(P.actions.length, "plan actions")));
  main.append(h("nav", { class: "nav" }, [["Timeline", "s-timeline"], ["Findings", "s-findings"], ["What is left to do", "s-what-is-left-to-do"],
    ["Blind spots & sources", "s-blind"], ["What rekey did", "s-what-rekey-did"]].map(function (l) {
    return h("a", { href: "#" + l[1] }, l[0]);
  })));

  function sec(title, sub) {
    const s = h("section", { id: "s-" + title.toLowerCase().replace(/[^a-z]+/g, "-") }, h("h2", null, title, sub ? h("span", { class: "sub" }, sub) : null));
    main.append(s);
    return s;
  }

  // Timeline.
  const tl = sec("Timeline", events.length ? events.length + " events from " + (events[0].e.time) + " to " + events[events.length - 1].e.time : "no events");
  const present = {};
  events.forEach(function (x) { cats(x.e).forEach(function (c) { present[c] = (present[c] || 0) + 1; }); });
  const active = {};
  Object.keys(present).forEach(function (c) { active[c] = true; });
  let showFailed = true;
  const filters = h("div", { class: "filters" });
  const catOrder = Object.keys(CATS).filter(function (c) { return present[c]; });
  Object.keys(present).forEach(function (c) { if (catOrder.indexOf(c) < 0) catOrder.push(c); });
  catOrder.forEach(function (c) {
    const b = h("button", { type: "button", "data-cat": c, onclick: function () { active[c] = !active[c]; b.classList.toggle("off", !active[c]); apply(); } },
      h("span", { class: "dot", style: "background:" + catColor(c) }), catName(c), h("span", { class: "cnt" }, present[c]));
    filters.append(b);
  });
  if (failedN) {
    const fb = h("button", { type: "button", "data-cat": "failed", onclick: function () { showFailed = !showFailed; fb.classList.toggle("off", !showFailed); apply(); } },
      h("span", { class: "dot", style: "background:repeating-linear-gradient(45deg,#94a3b8 0 2px,#fff 2px 4px)" }), "Failed calls", h("span", { class: "cnt" }, failedN));
    filters.append(fb);
  }
  tl.append(filters);

  // Swimlanes: one lane per key chain, events placed on a time axis.
  const lanes = [];
  const laneOf = {};
  events.forEach(function (x) {
    const k = chainKey(x.e);
    if (!(k in laneOf)) { laneOf[k] = lanes.length; lanes.push({ key: k, chain: x.e.chain && x.e.chain.length ? x.e.chain : [x.e.signer || "?"], evs: [] }); }
    lanes[laneOf[k]].evs.push(x);
  });
  const timed = events.filter(function (x) { return x.t !== null; });
  const nodes = [];
  if (timed.length) {
    let t0 = timed[0].t, t1 = timed[timed.length - 1].t;
    if (t1 === t0) { t0 -= 60000; t1 += 60000; }
    const pad = (t1 - t0) * 0.02;
    t0 -= pad; t1 += pad;
    const pos = function (t) { return ((t - t0) / (t1 - t0)) * 100; };
    const box = h("div", { class: "lanes" });
    lanes.forEach(function (L, li) {
      const depth = L.chain.length - 1;
      const last = L.chain[L.chain.length - 1];
      const d = derived[last];
      const label = (depth ? "\u21b3 ".repeat(1) : "") + short(last) + (d && d.principal ? " \u00b7 " + String(d.principal).split("/").slice(-2).join("/") : (depth ? "" : " (leaked key)"));
      const track = h("div", { class: "track" });
      L.evs.forEach(function (x) {
        if (x.t === null) return;
        const c = cats(x.e)[0];
        const dot = h("div", { class: "tick" + (x.e.failed ? " failed" : ""), style: "left:" + pos(x.t).toFixed(3) + "%;background:" + catColor(c),
          title: hms(x.e.time) + " " + x.e.event_name + (x.e.failed ? " (failed)" : ""),
          onclick: function () { flash("ev-" + x.e.event_id); } });
        dot.dataset.idx = String(x.i);
        nodes.push({ x: x, el: dot });
        track.append(dot);
      });
      box.append(h("div", { class: "lane", style: "padding-left:" + (depth * 14) + "px" },
        h("div", { class: "lbl mono", title: L.chain.join(" \u2192 "), style: "color:" + KEYC[li % KEYC.length] }, label), track));
    });
    const axis = h("div", { class: "axis" });
    const spanMs = t1 - t0;
    for (let i = 0; i <= 5; i++) {
      const t = t0 + (spanMs * i) / 5;
      const iso = new Date(t).toISOString();
      axis.append(h("span", { style: "left:" + (i * 20) + "%" }, spanMs > 86400000 * 2 ? iso.slice(5, 16).replace("T", " ") : iso.slice(11, 19)));
    }
    box.append(axis);
    tl.append(box);
  }

  // The list: day headers, gaps, runs of consecutive events by the same key chain.
  const list = h("div", { class: "list" });
  let run = null, prevKey = null, prevT = null, prevDay = null;
  const runs = [];
  events.forEach(function (x) {
    const e = x.e;
    const dy = day(e.time);
    if (dy && dy !== prevDay) { list.append(h("div", { class: "day" }, dy)); prevDay = dy; prevKey = null; }
    if (prevT !== null && x.t !== null && x.t - prevT > 10 * 60 * 1000) {
      list.append(h("div", { class: "gap" }, dur((x.t - prevT) / 1000) + " later"));
      prevKey = null;
    }
    const k = chainKey(e);
    if (k !== prevKey) {
      const chain = e.chain && e.chain.length ? e.chain : [e.signer || "?"];
      const depth = chain.length - 1;
      const last = chain[chain.length - 1];
      const d = derived[last];
      const head = h("div", { class: "runhead" }, depth ? "via " : "key ",
        chain.map(function (c, i) { return [i ? " \u2192 " : "", h("code", { title: c }, short(c))]; }),
        d ? " \u00b7 " + d.event_name + (d.principal ? " as " + d.principal : "") : (depth ? "" : " (the leaked key)"));
      run = h("div", { class: "run" + (depth ? " derived" : ""), style: "margin-left:" + (depth * 36) + "px;--keyc:" + KEYC[laneOf[k] % KEYC.length] }, head);
      runs.push(run);
      list.append(run);
      prevKey = k;
    }
    if (x.t !== null) prevT = x.t;
    const cs = cats(e);
    const ip = e.source_ip;
    const line2 = h("div", { class: "line2" },
      ip ? h("span", { class: "ip mono " + (allowed.has(ip) ? "ok" : "sus"), title: allowed.has(ip) ? "an allowed source of the fence" : "not a usual source of the key" }, ip) : null,
      e.vpc_endpoint_id ? h("span", { class: "mono", title: "VPC endpoint" }, "via " + e.vpc_endpoint_id) : null,
      e.region ? h("span", null, e.region) : null,
      e.user_agent ? h("span", { class: "ua mono", title: e.user_agent }, e.user_agent) : null,
      h("span", { class: "mono", title: "event id" }, e.event_id));
    const raw = {};
    ["request_parameters", "response_elements"].forEach(function (f) { if (e[f] !== null && e[f] !== undefined) raw[f] = e[f]; });
    if (Object.keys(raw).length) { if (e.arn) raw.arn = e.arn; if (e.seen_in && e.seen_in.length) raw.seen_in = e.seen_in; }
    const body = h("div", null,
      h("div", null,
        h("span", { class: "svc" }, svc(e) + ":"), h("span", { class: "name" }, e.event_name),
        e.failed ? h("span", { class: "err" }, "FAILED " + (e.error_code || "")) : null,
        e.categories.map(function (c) { return h("span", { class: "chip", style: "background:" + catColor(c) }, catName(c)); }),
        (evidenceOf[e.event_id] || []).map(function (f) { return h("a", { class: "chip fref", href: "#finding-" + encodeURIComponent(f.id), title: f.title }, f.id); })),
      line2,
      e.notes.length ? h("div", { class: "note" }, e.notes.join(" \u00b7 ")) : null,
      Object.keys(raw).length ? h("details", { class: "raw" }, h("summary", null, "request and response"), h("pre", null, JSON.stringify(raw, null, 2))) : null);
    const row = h("div", { class: "ev" + (e.failed ? " failed" : ""), id: "ev-" + e.event_id, "data-event": e.event_name, "data-cats": cs.join(" ") },
      h("div", { class: "t", title: e.time }, hms(e.time)),
      h("div", { class: "dot", style: "background:" + catColor(cs[0]) }),
      body);
    nodes.push({ x: x, el: row });
    run.append(row);
  });
  tl.append(list);

  function visible(e) {
    if (e.failed && !showFailed) return false;
    return cats(e).some(function (c) { return active[c]; });
  }
  function apply() {
    nodes.forEach(function (n) { n.el.classList.toggle("hidden", !visible(n.x.e)); });
    runs.forEach(function (r) { r.classList.toggle("hidden", !r.querySelector(".ev:not(.hidden)")); });
  }

  // Findings.
  const fs = sec("Findings", R.findings.length + " found, " + presentN + " still present");
  if (!R.findings.length) fs.append(h("p", { class: "empty" }, "None."));
  const cards = h("div", { class: "cards" });
  R.findings.forEach(function (f) {
    const pill = f.still_present === true ? h("span", { class: "pill present" }, "STILL PRESENT")
      : f.still_present === false ? h("span", { class: "pill gone" }, "GONE") : h("span", { class: "pill na" }, "N/A");
    cards.append(h("div", { class: "card", id: "finding-" + f.id, style: "--sevc:" + (SEV[f.severity] || "#64748b") },
      h("div", { class: "hd" }, h("span", null, h("b", { style: "color:" + (SEV[f.severity] || "#64748b") }, f.id), " \u00b7 " + f.severity + " \u00b7 " + f.kind), pill),
      h("div", { class: "ttl" }, f.title),
      h("div", { class: "res mono" }, f.resource),
      f.detail ? h("div", { class: "det" }, f.detail) : null,
      f.evidence.length ? h("div", { class: "evs" }, "evidence: ", f.evidence.map(function (id) {
        return h("a", { href: "#ev-" + encodeURIComponent(id), onclick: function (ev) { ev.preventDefault(); flash("ev-" + id); } }, id);
      })) : null));
  });
  fs.append(cards);

  // Blind spots and sources.
  const two = h("div", { class: "two" });
  const bs = h("section", { style: "margin-top:0" }, h("h2", null, "Blind spots", h("span", { class: "sub" }, "what the sources could not show")));
  if (!R.blind_spots.length) bs.append(h("p", { class: "empty" }, "None found in the sources read."));
  R.blind_spots.forEach(function (b) {
    bs.append(h("div", { class: "blind", style: "margin-bottom:8px" }, h("div", { class: "k" }, "\u26a0 " + b.kind), h("div", null, b.detail),
      b.evidence.length ? h("div", { class: "kv" }, "evidence: ", b.evidence.map(function (id) {
        return h("a", { href: "#ev-" + encodeURIComponent(id), onclick: function (ev) { ev.preventDefault(); flash("ev-" + id); } }, id + " ");
      })) : null));
  });
  const so = h("section", { style: "margin-top:0" }, h("h2", null, "Sources"));
  if (!R.sources.length) so.append(h("p", { class: "empty" }, "No source was read."));
  else so.append(h("table", null, h("tr", null, h("th", null, "Source"), h("th", null, "Status"), h("th", null, "Events"), h("th", null, "Covers")),
    R.sources.map(function (s) {
      return h("tr", null, h("td", null, h("b", null, s.kind), h("div", { class: "mono" }, s.location)),
        h("td", { style: "color:" + (s.status === "ok" ? "#15803d" : "#b91c1c") }, s.status), h("td", null, s.events), h("td", null, s.covers));
    })));
  two.append(bs, so);
  const wrap = h("div", { id: "s-blind", style: "margin-top:16px" }, two);
  main.append(wrap);

  // What is left: todo and the plan.
  const left = sec("What is left to do");
  if (R.todo.length) left.append(h("ul", { class: "todo" }, R.todo.map(function (t) { return h("li", null, t); })));
  left.append(h("h3", null, "Containment plan", h("span", { class: "sub kv", style: "font-weight:400;font-size:13px;margin-left:8px" }, P.actions.length + " actions \u00b7 review plan.json, then run:")));
  const copyBtn = h("button", { type: "button", onclick: function () {
    if (navigator.clipboard) navigator.clipboard.writeText(D.command).then(function () { copyBtn.textContent = "copied"; }, function () {});
  } }, "copy");
  left.append(h("div", { class: "cmd" }, h("code", null, D.command), copyBtn));
  if (P.actions.length) {
    left.append(h("table", null, h("tr", null, h("th", null, "#"), h("th", null, "Answers"), h("th", null, "Action"), h("th", null, "Undo")),
      P.actions.map(function (a) {
        const params = Object.assign({}, a.action); delete params.type;
        if (params.policy_document) params.policy_document = "(" + String(params.policy_document).length + " chars)";
        const u = a.undo || {};
        const undo = u.type === "none" ? "cannot be undone: " + (u.reason || "") : u.type === "action" ? (u.action && u.action.type) : u.type;
        return h("tr", null, h("td", null, h("b", null, a.id)),
          h("td", null, h("a", { href: "#finding-" + encodeURIComponent(a.finding), onclick: function (ev) { ev.preventDefault(); flash("finding-" + a.finding); } }, a.finding)),
          h("td", null, a.description, h("div", { class: "mono kv" }, a.action.type + " " + JSON.stringify(params))),
          h("td", { class: u.type === "none" ? "note" : "kv" }, undo));
      })));
  } else {
    left.append(h("p", { class: "empty" }, "The plan is empty."));
  }

  // What rekey did.
  const did = sec("What rekey did");
  if (R.actions_taken.length) did.append(h("ol", { class: "did" }, R.actions_taken.map(function (a) { return h("li", null, a); })));
  else did.append(h("p", { class: "empty" }, "Nothing yet: rekey only read."));
  const f = R.fence;
  if (f) {
    did.append(h("h3", null, "Fence: ", h("span", { class: "pill " + (f.status === "applied" ? "gone" : "na") }, f.status), f.policy_name ? h("code", { style: "margin-left:8px" }, f.policy_name) : null));
    if (f.detail) did.append(h("p", null, f.detail));
    if (f.allowed.length) did.append(h("table", null, h("tr", null, h("th", null, "Allowed source"), h("th", null, "Kind"), h("th", null, "Uses before the attack"), h("th", null, "First seen"), h("th", null, "Last seen")),
      f.allowed.map(function (s) { return h("tr", null, h("td", { class: "mono" }, s.value), h("td", null, s.kind), h("td", null, s.events), h("td", null, s.first_seen || "\u2014"), h("td", null, s.last_seen || "\u2014")); })));
    if (f.excluded.length) did.append(h("p", { class: "kv" }, "Left out of the fence: " + f.excluded.join(", ")));
  }
  const c = R.cutover;
  if (c) {
    did.append(h("h3", null, "Cutover: ", h("span", { class: "pill " + (c.outcome === "rotated" ? "gone" : "present") }, c.outcome)));
    did.append(h("p", null, c.new_key_id ? ["new key ", h("code", null, c.new_key_id)] : null, c.targets.length ? " \u00b7 targets: " + c.targets.join(", ") : null, c.detail ? [h("br"), c.detail] : null));
  }
  if (R.sessions_revoked.length) {
    did.append(h("h3", null, "Sessions revoked"));
    did.append(h("table", null, h("tr", null, h("th", null, "Principal"), h("th", null, "Policy"), h("th", null, "Issued before"), h("th", null, "Status")),
      R.sessions_revoked.map(function (s) { return h("tr", null, h("td", null, s.kind + " ", h("code", null, s.name)), h("td", { class: "mono" }, s.policy_name), h("td", null, s.issued_before), h("td", null, s.status)); })));
  }

  document.body.setAttribute("data-rendered", "ok");
})();
