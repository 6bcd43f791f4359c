"""Token-reward HTML page: ``fgrlhf report``. One self-contained file (inline CSS and JS, no
network), every response token shaded by its per-token value on a diverging scale (red < 0 <
blue, white at 0; the scale's end is the page's largest |value|), a legend, and a hover title
naming the token, its id and the values::

    fgrlhf report --rm runs/reward/final --pairs heldout_edits.jsonl -o rm_report.html
    fgrlhf report --rollouts runs/ppo -o ppo_report.html      # or runs/ppo/rollouts.jsonl

* **Reward model on a pairs file** (:func:`rm_report`): the pairs are read and tokenised by the
  trainer's own loader (:func:`trainer.data.pairs.load_pair_data`) and scored by the model the
  trainer's way (:func:`trainer.models.per_token_scores`, :func:`trainer.models.sequence_reward`);
  each edited pair shows original and edited side by side, the tokens the edit removed
  (original side) and added (edited side) marked from the examples' changed masks (the token
  diff the token RM is trained on), the margin R(edited) − R(original) and whether the RM ranks
  the pair right; sortable by margin; the accuracy over the shown pairs at the top.
* **PPO rollouts** (:func:`ppo_report`): the samples ``trainer/ppo.py`` appends to
  ``output_dir/rollouts.jsonl`` (:func:`trainer.rollout.rollout_samples`: a few rows of chosen iterations with
  their per-token RM reward, KL, total reward and advantage); a selector switches the shading.

Everything on the page is untrusted (model outputs, and every field of a ``rollouts.jsonl`` or a
pairs file), and one rule covers it: every value that reaches the HTML either goes through the
one escaping function, :func:`escape` (``& < > " '`` as entities, so a response holding
``<script>`` or ``"><b>`` shows as text, in element text and attribute values alike; and every
invisible or reordering character -- the bidi controls U+202A-U+202E, U+2066-U+2069, U+200E,
U+200F, U+061C, the zero-width ones, U+2028/U+2029, other format and control characters, a
lone surrogate -- replaced by a visible marker ``⟨U+202E⟩``, so ``"\\u202egnp.exe"`` cannot show
as ``exe.png``), or is formatted as a number it has been checked to be (:func:`_float`: anything
else is NaN and prints ``nan``). :func:`read_rollouts` validates each record strictly first
(types, signs, lengths; a :class:`~trainer.data.formats.DataError` naming file, line and field),
so a bad file is refused before anything is rendered; the renderers escape anyway. A
Content-Security-Policy admits only the page's own script (by hash) as a further line of
defence. Size is capped: at most ``max_items`` pairs / samples and ``max_tokens`` tokens
per response, and rendering stops at ``max_bytes`` of HTML, each with a note saying so.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import html
import json
import math
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from trainer.data.formats import DataError, finite_number
from trainer.errors import ConfigError
from trainer.infra.command import add_flags, config_from_args, run
from trainer.infra.metrics import read_log
from trainer.infra.outputs import check_output, write_atomic

__all__ = [
    "NEGATIVE",
    "POSITIVE",
    "add_arguments",
    "colour",
    "escape",
    "ppo_report",
    "ppo_report_html",
    "read_rollouts",
    "rm_report",
    "rm_report_html",
    "rollouts_file",
    "run_cli",
    "score_rm_pairs",
    "write_atomic",
]

NEGATIVE = (215, 48, 39)  # the colour of value −scale (ColorBrewer RdBu's red end)
POSITIVE = (33, 102, 172)  # the colour of value +scale (RdBu's blue end)
MAX_BYTES = 20_000_000


# --------------------------------------------------------------------------------------------
# Colours and token text
# --------------------------------------------------------------------------------------------
def colour(value: float, scale: float) -> str:
    """``"rgb(r, g, b)"`` of ``value`` on the diverging scale: white at 0, linear to
    :data:`POSITIVE` at +``scale`` and :data:`NEGATIVE` at −``scale`` (clamped beyond; NaN and a
    zero scale are white). By hand: colour(0.5, 1) = white halfway to (33, 102, 172) =
    ``rgb(144, 178, 214)`` (each channel rounded half to even)."""
    if not math.isfinite(value) or scale <= 0:
        return "rgb(255, 255, 255)"
    t = min(abs(value) / scale, 1.0)
    end = POSITIVE if value > 0 else NEGATIVE
    r, g, b = (round(255 + (c - 255) * t) for c in end)
    return f"rgb({r}, {g}, {b})"


def ink(value: float, scale: float) -> str:
    """The text colour on :func:`colour`'s background: white past 60% of the scale, else near-black."""
    return "#fff" if math.isfinite(value) and scale > 0 and abs(value) / scale > 0.6 else "#111"


def _scale(values: list[float]) -> float:
    """The scale's end: the largest finite |value| (1 when there is none)."""
    m = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    return m if m > 0 else 1.0


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 1.5em 3em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:.8em 0 .3em} .meta{color:#555;font-size:.9em}
.summary{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:.6em 0}
.summary b{font-size:1.1em}
.note{background:#fff6d6;border:1px solid #e6d28a;padding:.4em .8em;border-radius:4px}
.bar{position:sticky;top:0;background:#fafafa;padding:.5em 0;border-bottom:1px solid #ddd;z-index:2;
 display:flex;gap:1.5em;align-items:center;flex-wrap:wrap}
.legend{display:flex;align-items:center;gap:.4em;font-size:.85em}
.grad{width:180px;height:12px;border:1px solid #999;
 background:linear-gradient(to right,rgb(215,48,39),rgb(255,255,255),rgb(33,102,172))}
.item{background:#fff;border:1px solid #ddd;border-radius:6px;margin:.8em 0;padding:.5em .8em}
.item.wrong{border-left:5px solid #d73027} .item.right{border-left:5px solid #1a9850}
.head{font-size:.9em;color:#444;margin-bottom:.3em} .head b{color:#000}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:1em}
.side h3{font-size:.85em;margin:.2em 0;color:#555;font-weight:600}
.prompt{white-space:pre-wrap;color:#555;font-size:.85em;background:#f3f3f3;padding:.3em .5em;
 border-radius:4px}
.resp{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;line-height:1.9}
.t{border-radius:2px;padding:1px 0}
.t.added{border-bottom:3px solid #1a9850}
.t.removed{border-bottom:3px dashed #762a83;text-decoration:line-through}
.mk{font-size:.8em;padding:0 .3em;border-radius:3px}
.mk.added{border-bottom:3px solid #1a9850}
.mk.removed{border-bottom:3px dashed #762a83;text-decoration:line-through}
.bidi{font-size:.75em;color:#a00;background:#fee;border:1px solid #d99;border-radius:2px;padding:0 1px}
"""

# Sorting (RM) and switching the shaded value (PPO). Colours are recomputed with the same rule as
# :func:`colour`; the scale of each value is on <body data-scales>.
_JS = """
(function(){
"use strict";
var NEG=[215,48,39],POS=[33,102,172];
var scales=JSON.parse(document.body.getAttribute("data-scales")||"{}");
function colour(v,s){if(!isFinite(v)||s<=0)return"rgb(255, 255, 255)";var t=Math.min(Math.abs(v)/s,1);
 var e=v>0?POS:NEG;function ch(c){var x=255+(c-255)*t;var f=Math.floor(x),d=x-f;
 var r=d>0.5?f+1:(d<0.5?f:(f%2===0?f:f+1));return r;}
 return"rgb("+ch(e[0])+", "+ch(e[1])+", "+ch(e[2])+")";}
var sel=document.getElementById("value");
if(sel){sel.addEventListener("change",function(){var k=sel.value,s=scales[k];
 var spans=document.querySelectorAll("span.t");for(var i=0;i<spans.length;i++){
  var v=parseFloat(spans[i].getAttribute("data-"+k));spans[i].style.backgroundColor=colour(v,s);
  spans[i].style.color=(isFinite(v)&&s>0&&Math.abs(v)/s>0.6)?"#fff":"#111";}
 document.getElementById("lo").textContent=(-s).toPrecision(3);
 document.getElementById("hi").textContent="+"+s.toPrecision(3);});}
var sort=document.getElementById("sort");
if(sort){sort.addEventListener("change",function(){var box=document.getElementById("items");
 var items=Array.prototype.slice.call(box.children);var how=sort.value;
 items.sort(function(a,b){var ma=parseFloat(a.getAttribute("data-margin")),
  mb=parseFloat(b.getAttribute("data-margin"));
  var ia=parseInt(a.getAttribute("data-index"),10),ib=parseInt(b.getAttribute("data-index"),10);
  if(how==="asc")return ma-mb||ia-ib; if(how==="desc")return mb-ma||ia-ib; return ia-ib;});
 for(var i=0;i<items.length;i++)box.appendChild(items[i]);});}
})();
"""


@functools.cache
def _hidden() -> re.Pattern:
    """The characters :func:`escape` replaces by a marker: Unicode's format (Cf: the bidi
    controls U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C, the zero-width U+200B-U+200D,
    U+2060, U+FEFF, soft hyphen, tag characters, ...), line and paragraph separators (Zl, Zp:
    U+2028, U+2029), lone surrogates (Cs) and control characters (Cc) other than tab, newline and
    carriage return. Built once from :mod:`unicodedata` (about 0.3 s)."""
    cats = {"Cf", "Zl", "Zp", "Cs"}
    spans: list[list[int]] = []
    for c in range(0x110000):
        ch = chr(c)
        cat = unicodedata.category(ch)
        if cat in cats or (cat == "Cc" and ch not in "\t\n\r"):
            if spans and spans[-1][1] == c - 1:
                spans[-1][1] = c
            else:
                spans.append([c, c])
    cls = "".join(re.escape(chr(a)) + (f"-{re.escape(chr(b))}" if b > a else "") for a, b in spans)
    return re.compile(f"[{cls}]")


def _marker(ch: str, attr: bool) -> str:
    """The visible stand-in of a hidden character: ``⟨U+202E⟩`` (in an attribute value or
    ``<title>``), else that text in a ``<span class="bidi">`` titled with the character's name
    (``U+202E RIGHT-TO-LEFT OVERRIDE``)."""
    code = f"U+{ord(ch):04X}"
    text = f"\u27e8{code}\u27e9"
    if attr:
        return text
    cat = unicodedata.category(ch)
    name = unicodedata.name(ch, "") or {"Cc": "CONTROL CHARACTER", "Cs": "LONE SURROGATE"}.get(cat, cat)
    return f'<span class="bidi" title="{code} {name}">{text}</span>'


def escape(value: Any, attr: bool = False) -> str:
    """``str(value)`` safe to put in the page: the one escaping function every text on the page
    goes through (numbers aside, which are formatted only after :func:`_float`).

    ``& < > " '`` become entities (the same text is then safe in element content and in a
    double- or single-quoted attribute value), and each character of :func:`_hidden` -- a bidi
    control that would reorder the text around it (``"\\u202egnp.exe"`` displays as
    ``exe.png``), an invisible zero-width or format character, a line separator, a control
    character, a lone surrogate (which UTF-8 cannot even encode) -- becomes a visible marker
    (:func:`_marker`): ``⟨U+202E⟩`` plain with ``attr`` (for attribute values and ``<title>``,
    where markup is not parsed), else in a ``<span class="bidi">`` naming the character."""
    text = html.escape(str(value), quote=True)
    return _hidden().sub(lambda m: _marker(m.group(), attr), text)


def _float(v: Any) -> float:
    """``v`` as a float when it is a real number (an int or a float, not a bool; an int too big
    for a float is ±inf), else NaN: what a number on the page is formatted from, whatever
    reached the renderer."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    try:
        return float(v)
    except OverflowError:
        return math.copysign(math.inf, v)


def _num(v: Any) -> str:
    """``+0.1235`` (4 decimals, signed) of a finite number (:func:`_float`), else ``nan``."""
    x = _float(v)
    return f"{x:+.4f}" if math.isfinite(x) else "nan"


def _g(v: Any) -> str:
    """A ``data-`` attribute's number (``%.6g`` of :func:`_float`: ``nan``, ``inf`` as such)."""
    return f"{_float(v):.6g}"


def _tokens_html(
    pieces: list[str],
    ids: list[int],
    values: dict[str, list[float]],
    shade: str,
    scale: float,
    marks: list[bool] | None,
    mark_class: str,
    max_tokens: int,
) -> str:
    """The ``<span class="t">`` of each token: background = :func:`colour` of ``values[shade]``,
    ``data-<key>`` for every value, a ``title`` with the token (as a JSON string, so whitespace
    shows), its id and the values; ``mark_class`` on tokens where ``marks`` is True. The token
    text, id and title go through :func:`escape`, the values through :func:`_float` (a missing or
    non-numeric one is NaN: white, ``nan``); the keys of ``values`` and ``mark_class`` are the
    caller's constants."""
    out = []
    for i, (piece, tid) in enumerate(zip(pieces, ids)):
        if i >= max_tokens:
            out.append(f'<span class="more"> … {len(ids) - max_tokens} more tokens not shown</span>')
            break
        vals = {k: _float(v[i]) if i < len(v) else math.nan for k, v in values.items()}
        title = f"{json.dumps(str(piece), ensure_ascii=False)} · id {tid} · " + " · ".join(
            f"{k} {_num(v)}" for k, v in vals.items()
        )
        cls = "t " + mark_class if marks is not None and i < len(marks) and marks[i] else "t"
        data = " ".join(f'data-{k}="{_g(v)}"' for k, v in vals.items())
        out.append(
            f'<span class="{cls}" style="background-color:{colour(vals[shade], scale)};'
            f'color:{ink(vals[shade], scale)}" '
            f'data-id="{escape(tid, attr=True)}" {data} title="{escape(title, attr=True)}">'
            f"{escape(piece)}</span>"
        )
    return "".join(out)


def _page(title: str, header: str, controls: str, items: list[str], note: str, scales: dict) -> str:
    """The whole document: CSP admitting only :data:`_JS` (by its hash), CSS, header, sticky bar
    with controls and legend, the items, the script. ``header``, ``controls`` and ``items`` are
    HTML the caller built by the escaping rule; ``title`` and ``note`` are escaped here;
    ``scales``: value key -> the scale's end (a float)."""
    digest = base64.b64encode(hashlib.sha256(_JS.encode()).digest()).decode()
    csp = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; img-src data:"
    scales = {k: _float(v) for k, v in scales.items()}
    first = next(iter(scales.values()), 1.0)
    legend = (
        f'<div class="legend">value <span id="lo">{-first:.3g}</span><span class="grad"></span>'
        f'<span id="hi">+{first:.3g}</span></div>'
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title, attr=True)}</title><style>{_CSS}</style></head>\n"
        f'<body data-scales="{escape(json.dumps(scales), attr=True)}">\n<h1>{escape(title)}</h1>\n{header}\n'
        + (f'<p class="note">{escape(note)}</p>\n' if note else "")
        + f'<div class="bar">{controls}{legend}</div>\n<div id="items">\n'
        + "\n".join(items)
        + f"\n</div>\n<script>{_JS}</script>\n</body></html>\n"
    )


def _capped(rendered: list[str], total: int, max_bytes: int, what: str) -> tuple[list[str], str]:
    """Keep the items of ``rendered`` up to ``max_bytes`` of HTML; the note says what was left out
    (``total``: how many the input had)."""
    kept, size = [], 0
    for item in rendered:
        if size + len(item) > max_bytes and kept:
            break
        kept.append(item)
        size += len(item)
    note = ""
    if len(kept) < total:
        note = f"Showing {len(kept)} of {total} {what}"
        note += " (page size cap)." if len(kept) < len(rendered) else " (max_items cap)."
    return kept, note


def _count(v: Any, default: int) -> int:
    """``v`` when it is a non-negative int (not a bool), else ``default``: a count the page prints
    or compares, whatever reached the renderer."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else default


def _ordered(values: list) -> list:
    """The distinct ``values`` in order (numbers first, by value; anything else after, by its
    text) without comparing mixed types or hashing lists: a renderer's defence for values
    :func:`read_rollouts` would have refused."""
    seen: dict[str, Any] = {}
    for v in values:
        seen.setdefault(f"{type(v).__name__}:{v!r}", v)

    def key(v: Any) -> tuple:
        x = _float(v)
        return (0, x if math.isfinite(x) else math.inf, "") if x == x else (1, 0.0, str(v))

    return sorted(seen.values(), key=key)


def rm_report_html(
    pairs: list[dict],
    summary: dict,
    max_tokens: int = 2048,
    max_bytes: int = MAX_BYTES,
) -> str:
    """The reward-model page.

    Args:
        pairs: per edited pair ``{"index", "prompt", "margin", "original": side, "edited": side}``,
            a side being ``{"pieces": [str], "ids": [int], "reward": [float] (r_t per response
            token), "changed": [bool] (removed / added tokens), "R": float}``.
        summary: ``rm_dir``, ``pairs_file``, ``level``, ``n_pairs`` (pairs in the file),
            ``accuracy`` (over ``pairs``), ``mean_margin``.

    Every text (prompt, pieces, ids, index, the summary's strings) goes through :func:`escape`
    and every number through :func:`_float` / :func:`_num`, whatever their type.
    """
    scale = _scale([_float(v) for p in pairs for s in ("original", "edited") for v in p[s]["reward"]])
    items = []
    for p in pairs:
        margin = _float(p["margin"])
        right = margin > 0
        sides = []
        for key, label, cls in (
            ("original", "original (rejected)", "removed"),
            ("edited", "edited (chosen)", "added"),
        ):
            s = p[key]
            toks = _tokens_html(
                s["pieces"], s["ids"], {"reward": s["reward"]}, "reward", scale, s["changed"], cls, max_tokens
            )
            n_marked = sum(c is True for c in s["changed"])
            sides.append(
                f'<div class="side"><h3>{label} · R {_num(s["R"])} · {n_marked} {cls}</h3>'
                f'<div class="resp">{toks}</div></div>'
            )
        items.append(
            f'<div class="item pair {"right" if right else "wrong"}" '
            f'data-index="{escape(p["index"], attr=True)}" '
            f'data-margin="{_g(margin)}" data-correct="{int(right)}">'
            f'<div class="head"><b>pair {escape(p["index"])}</b> · margin R(edited) − R(original) '
            f"<b>{_num(margin)}</b> · {'ranked right ✓' if right else 'ranked wrong ✗'}</div>"
            f'<div class="prompt">{escape(p["prompt"])}</div><div class="cols">{"".join(sides)}</div></div>'
        )
    n_pairs = _count(summary.get("n_pairs"), len(pairs))
    kept, note = _capped(items, n_pairs, max_bytes, "edited pairs")
    acc = _float(summary.get("accuracy", math.nan))
    level_note = (
        " A sequence-level RM's reward is its last token's score; the other tokens' scores are shown "
        "but carry no training signal."
        if summary.get("level") == "sequence"
        else ""
    )
    header = (
        f'<div class="summary">accuracy on edited pairs (R(edited) &gt; R(original)): '
        f"<b>{f'{acc:.1%}' if math.isfinite(acc) else 'nan'}</b> of "
        f"{len(pairs)} scored · mean margin {_num(summary.get('mean_margin', math.nan))}"
        f'<div class="meta">reward model {escape(summary.get("rm_dir", ""))} '
        f"(level {escape(summary.get('level', ''))})"
        f" · pairs {escape(summary.get('pairs_file', ''))} ({n_pairs} edited pairs)."
        f" Shading: per-token reward r_t.{level_note}</div>"
        '<div class="meta">marks: <span class="mk removed">removed by the edit</span> (original side) · '
        '<span class="mk added">added by the edit</span> (edited side); '
        "hover a token for its id and value.</div></div>"
    )
    controls = (
        '<label>sort <select id="sort"><option value="file">file order</option>'
        '<option value="asc">margin ascending (worst first)</option>'
        '<option value="desc">margin descending</option></select></label>'
    )
    return _page(
        "token rewards: reward model on edited pairs", header, controls, kept, note, {"reward": scale}
    )


# The per-token values of a PPO rollout sample, as (record key, label).
ROLLOUT_VALUES = (
    ("reward", "RM reward r_t"),
    ("advantage", "advantage"),
    ("kl", "KL_t"),
    ("total", "total reward"),
)


def ppo_report_html(
    samples: list[dict],
    source: str,
    max_items: int = 200,
    max_tokens: int = 2048,
    max_bytes: int = MAX_BYTES,
) -> str:
    """The PPO page from rollout samples (:func:`trainer.rollout.rollout_samples` records, as
    :func:`read_rollouts` validates them): per sample the prompt, the response shaded by the
    value the selector picks (RM reward r_t by default; advantage, KL_t, total reward
    r_t − β·KL_t), its R(τ). Over ``max_items`` samples: evenly spaced ones (first and last
    kept), with a note. Every text (prompt, pieces, ids, iteration, sample, ``source``) goes
    through :func:`escape` and every number through :func:`_float`, even for records that did
    not come through :func:`read_rollouts`."""
    n = len(samples)
    if n > max_items:
        idx = sorted({round(i * (n - 1) / max(max_items - 1, 1)) for i in range(max_items)})
        shown = [samples[i] for i in idx]
    else:
        shown = samples
    keys = [k for k, _ in ROLLOUT_VALUES if all(k in s for s in shown)] or ["reward"]
    scales = {k: _scale([_float(v) for s in shown for v in s.get(k, [])]) for k in keys}
    items = []
    for j, s in enumerate(shown):
        vals = {k: s[k] for k in keys if k in s}
        toks = _tokens_html(s["pieces"], s["ids"], vals, keys[0], scales[keys[0]], None, "", max_tokens)
        items.append(
            f'<div class="item rollout" data-index="{j}" data-margin="{_g(s.get("sequence_reward", 0.0))}">'
            f'<div class="head"><b>iteration {escape(s["iteration"])}</b> · '
            f"sample {escape(s.get('sample', j))} · "
            f"R(τ) <b>{_num(s.get('sequence_reward', math.nan))}</b> · {len(s['ids'])} tokens"
            f"{' · cut at max_new_tokens' if s.get('truncated') is True else ''}</div>"
            f'<div class="prompt">{escape(s.get("prompt", ""))}</div><div class="resp">{toks}</div></div>'
        )
    kept, note = _capped(items, n, max_bytes, "rollout samples")
    iters = _ordered([s["iteration"] for s in samples])
    header = (
        f'<div class="summary"><b>{n}</b> rollout samples from {len(iters)} iterations '
        f"({', '.join(escape(i) for i in iters[:20])}{' …' if len(iters) > 20 else ''})"
        f'<div class="meta">source {escape(source)}. Shading: the selected per-token value; hover a token '
        "for its id and every value.</div></div>"
    )
    labels = dict(ROLLOUT_VALUES)
    controls = (
        '<label>shade by <select id="value">'
        + "".join(f'<option value="{k}">{escape(labels[k])}</option>' for k in keys)
        + "</select></label>"
    )
    return _page("token rewards: PPO rollouts", header, controls, kept, note, scales)


# --------------------------------------------------------------------------------------------
# Reward model: load, score, render
# --------------------------------------------------------------------------------------------
def score_rm_pairs(
    rm_dir: str | Path,
    pairs_file: str,
    max_items: int = 200,
    batch_size: int = 16,
    split: str | None = None,
    **data_cfg: Any,
) -> tuple[list[dict], dict]:
    """Score the first ``max_items`` edited pairs of ``pairs_file`` with the RM in ``rm_dir``
    (one process; CUDA when available) into :func:`rm_report_html`'s ``pairs`` and ``summary``.

    The file is read and tokenised by :func:`trainer.data.pairs.load_pair_data` with the RM's
    level and prompt template from its metadata and ``data_cfg`` (``SupervisedConfig`` keys:
    ``max_length``, ``skip_invalid``, ``eval_fraction``, ...); ``split`` as there (None: every
    record).

    Raises:
        trainer.infra.config.ConfigError: ``rm_dir`` is not a reward-model directory.
        DataError: a bad pairs file or record, or no edited pairs in it.
    """
    import torch  # lazy: torch (fgrlhf --help is torch-free)

    from trainer.data.pairs import (  # lazy: torch (fgrlhf --help is torch-free)
        SupervisedConfig,
        collate_pairs,
        load_pair_data,
    )
    from trainer.models import (  # lazy: torch (fgrlhf --help is torch-free)
        open_reward_model,
        pad_token_id,
        per_token_scores,
        sequence_reward,
    )
    from trainer.rollout import token_pieces  # lazy: torch (fgrlhf --help is torch-free)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rm, meta, tokenizer = open_reward_model(rm_dir, "rm_dir", device)
    model = rm.model
    level = meta["level"]
    cfg = SupervisedConfig(prompt_template=meta.get("prompt_template", "auto"), **data_cfg)
    data = load_pair_data(pairs_file, tokenizer, cfg, split=split)
    if not data.edited:
        raise DataError(pairs_file, f"no edited pairs to show (skipped: {dict(data.skipped)})")
    pairs = data.edited[:max_items]
    pad_id = pad_token_id(tokenizer)
    out = []
    with torch.no_grad():
        for b in range(0, len(pairs), batch_size):
            chunk = pairs[b : b + batch_size]
            batch = {k: v.to(device) for k, v in collate_pairs(chunk, pad_id).items()}
            scores = per_token_scores(model, batch["input_ids"], batch["attention_mask"])
            R = sequence_reward(scores, batch["response_mask"], level).tolist()
            scores = scores.cpu()
            B = len(chunk)
            for j, (edited, original) in enumerate(chunk):
                sides = {}
                for key, ex, row in (("edited", edited, j), ("original", original, B + j)):
                    pos = [t for t, m in enumerate(ex.response_mask) if m]
                    ids = [ex.input_ids[t] for t in pos]
                    sides[key] = {
                        "pieces": token_pieces(tokenizer, ids),
                        "ids": ids,
                        "reward": [float(scores[row, t]) for t in pos],
                        "changed": [bool(ex.changed_mask[t]) for t in pos],
                        "R": R[row],
                    }
                prompt = tokenizer.decode(edited.input_ids[: edited.prompt_len], skip_special_tokens=True)
                out.append({"index": b + j, "prompt": prompt, "margin": R[j] - R[B + j], **sides})
    margins = [p["margin"] for p in out]
    summary = {
        "rm_dir": str(rm_dir),
        "pairs_file": str(pairs_file),
        "level": level,
        "n_pairs": len(data.edited),
        "accuracy": sum(m > 0 for m in margins) / len(margins),
        "mean_margin": sum(margins) / len(margins),
    }
    return out, summary


def rm_report(
    rm_dir: str | Path, pairs_file: str, out: str | Path, max_items: int = 200, **kw: Any
) -> tuple[Path, dict]:
    """Score (:func:`score_rm_pairs`, ``kw`` passed on) and write the RM page to ``out``
    (atomically). Returns the path and the summary."""
    pairs, summary = score_rm_pairs(rm_dir, pairs_file, max_items, **kw)
    return write_atomic(out, rm_report_html(pairs, summary)), summary


# --------------------------------------------------------------------------------------------
# PPO: the samples the trainer saves, read, render
# --------------------------------------------------------------------------------------------
def __getattr__(name: str) -> Any:
    """:func:`trainer.rollout.token_pieces` and :func:`trainer.rollout.rollout_samples` (moved
    there: PPO's per-iteration path needs no HTML), still importable from here."""
    if name in ("rollout_samples", "token_pieces"):
        from trainer import rollout  # lazy: torch (fgrlhf --help is torch-free)

        return getattr(rollout, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The per-token value lists of a rollout record (one number per response token each).
ROLLOUT_LISTS = ("reward", "kl", "total", "advantage", "value")


def _short(v: Any) -> str:
    """``repr(v)`` cut to 40 characters, for messages (repr keeps a message on one line and shows
    control characters as escapes)."""
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _value(v: Any, src: str, where: str, key: str) -> float:
    """A per-token value or R(τ) as a float: any JSON number, NaN and ±inf included (NaN shades
    white and prints ``nan``), and ``null`` as NaN (what a strict JSON writer makes of NaN).

    Raises:
        DataError: a bool, a string or anything else that is not a number (names ``key``).
    """
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise DataError(src, f"expected a number, got {type(v).__name__} {_short(v)}", where, key)
    return _float(v)


def _check_rollout(rec: dict, src: str, where: str) -> dict:
    """One ``rollouts.jsonl`` record, validated field by field (:func:`rollout_samples`'s shape).

    Required: ``iteration`` (an int >= 0, not a bool; 2.0 reads as 2), ``pieces`` (a list of
    strings), ``ids`` (a list of ints), ``reward`` (a list of numbers). Optional, checked when
    present: ``sample`` (an int >= 0), ``prompt`` (a string), ``kl``, ``total``, ``advantage``,
    ``value`` (lists of numbers), ``sequence_reward`` (a number), ``truncated`` (a bool). Every
    list has one entry per id. Numbers may be NaN or ±inf (or ``null``: NaN) but not strings.
    Other fields are kept as they are (the page does not show them).

    Returns:
        The record with its numbers normalised (ints for the counts and ids, floats for the values).

    Raises:
        DataError: names ``src``, ``where`` and the field (``ids[3]`` for an entry of a list).
    """
    for key in ("iteration", "pieces", "ids", "reward"):
        if key not in rec:
            raise DataError(src, "missing", where, key)
    out = dict(rec)
    for key in ("iteration", "sample"):
        if key in rec:
            v = finite_number(rec[key], src, where, key, integer=True)
            if v < 0:
                raise DataError(src, f"expected an integer >= 0, got {v}", where, key)
            out[key] = v
    for key in ("pieces", "ids", *ROLLOUT_LISTS):
        if key in rec and not isinstance(rec[key], list):
            raise DataError(
                src, f"expected a list, got {type(rec[key]).__name__} {_short(rec[key])}", where, key
            )
    out["ids"] = [finite_number(t, src, where, f"ids[{i}]", integer=True) for i, t in enumerate(rec["ids"])]
    for i, piece in enumerate(rec["pieces"]):
        if not isinstance(piece, str):
            raise DataError(
                src, f"expected a string, got {type(piece).__name__} {_short(piece)}", where, f"pieces[{i}]"
            )
    n = len(out["ids"])
    for key in ("pieces", *ROLLOUT_LISTS):
        if key not in rec:
            continue
        if len(rec[key]) != n:
            raise DataError(src, f"{len(rec[key])} entries for {n} ids (one per response token)", where, key)
        if key != "pieces":
            out[key] = [_value(v, src, where, f"{key}[{i}]") for i, v in enumerate(rec[key])]
    if "sequence_reward" in rec:
        out["sequence_reward"] = _value(rec["sequence_reward"], src, where, "sequence_reward")
    for key, typ, what in (("truncated", bool, "true or false"), ("prompt", str, "a string")):
        if key in rec and not isinstance(rec[key], typ):
            raise DataError(
                src, f"expected {what}, got {type(rec[key]).__name__} {_short(rec[key])}", where, key
            )
    return out


def rollouts_file(path: str | Path) -> Path:
    """The ``rollouts.jsonl`` that ``path`` names: itself, or ``path/rollouts.jsonl`` for a run
    directory."""
    p = Path(path)
    return p / "rollouts.jsonl" if p.is_dir() else p


def read_rollouts(path: str | Path) -> list[dict]:
    """The records of a ``rollouts.jsonl`` (or of ``path/rollouts.jsonl`` for a run directory),
    each validated by :func:`_check_rollout` (types, signs, one value per token).

    Raises:
        DataError: no such file, no records, or a record with a missing or bad field (names the
            file, the line and the field).
    """
    p = rollouts_file(path)
    missing = "no such file (a PPO run writes output_dir/rollouts.jsonl)"
    return [_check_rollout(rec, str(p), f"line {i}") for i, rec in read_log(p, "no rollout samples", missing)]


def ppo_report(path: str | Path, out: str | Path, max_items: int = 200) -> Path:
    """Write the PPO page of the samples in ``path`` (a run directory or its ``rollouts.jsonl``)."""
    samples = read_rollouts(path)
    return write_atomic(out, ppo_report_html(samples, str(path), max_items))


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
@dataclass
class ReportConfig:
    """Settings of ``fgrlhf report`` (its flags are derived from these fields): either ``rm`` with
    ``pairs``, or ``rollouts``."""

    AT_LEAST: ClassVar[dict] = {"max_items": 1, "max_length": 2, "batch_size": 1}

    rm: str | None = None
    """A reward-model directory (trainer/reward.py's ``final/`` or ``best/``)."""
    pairs: str | None = None
    """With ``--rm``: an ``fgrlhf edit`` JSONL of edited pairs."""
    rollouts: str | None = None
    """A PPO run directory or its ``rollouts.jsonl``."""
    output: str = "report.html"
    """The HTML file."""
    max_items: int = 200
    """Most pairs / samples on the page."""
    max_length: int = 1024
    """With ``--rm``: longest prompt + response (tokens)."""
    batch_size: int = 16
    """With ``--rm``: pairs per forward."""
    skip_invalid: bool = False
    """With ``--rm``: skip (and count) bad records."""

    def check(self) -> None:
        """One page at a time: a reward model on pairs, or a PPO run's rollouts.

        Raises:
            ConfigError: naming the flags.
        """
        if (self.rm is None) == (self.rollouts is None):
            raise ConfigError("give either --rm RM_DIR --pairs PAIRS or --rollouts RUN_DIR")
        if self.rm is not None and not self.pairs:
            raise ConfigError("--rm needs --pairs (an `fgrlhf edit` JSONL)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``fgrlhf report`` (:class:`ReportConfig`)."""
    add_flags(parser, ReportConfig, short={"output": "-o"})


def run_cli(args: argparse.Namespace) -> int:
    """``fgrlhf report``: 0 written; 2 bad input (wrong arguments; an ``-o`` that is a directory or
    one of the inputs -- the rollouts file, the pairs file --, refused before anything is read;
    not a reward-model directory; a bad pairs or rollouts file: the message names the file, line
    and field); 1 a file cannot be read or the page cannot be written (an OSError). Each error is
    one line on stderr (:func:`trainer.infra.command.run`)."""
    return run(lambda: write_report(config_from_args(ReportConfig, args)), _say)


def _say(message: str) -> None:
    print(f"fgrlhf report: {message}", file=sys.stderr)


def write_report(cfg: ReportConfig) -> None:
    """Write the page ``cfg`` asks for and say where (and, for a reward model, its accuracy)."""
    source = rollouts_file(cfg.rollouts) if cfg.rollouts is not None else None
    model_files = sorted(Path(cfg.rm).glob("*")) if cfg.rm is not None else []  # not over the RM
    out = check_output(cfg.output, "-o", inputs=[source, cfg.pairs, *model_files])
    if cfg.rm is not None:
        pairs, s = score_rm_pairs(
            cfg.rm, cfg.pairs, cfg.max_items, batch_size=cfg.batch_size,
            max_length=cfg.max_length, skip_invalid=cfg.skip_invalid, eval_fraction=0.0,
        )  # fmt: skip
        text = rm_report_html(pairs, s)
        done = f"{s['accuracy']:.1%} of {min(s['n_pairs'], cfg.max_items)} edited pairs ranked right"
    else:
        text = ppo_report_html(read_rollouts(cfg.rollouts), str(cfg.rollouts), cfg.max_items)
        done = ""
    try:
        path = write_atomic(out, text)
    except OSError as e:
        where = f" ({e.filename})" if e.filename and str(e.filename) != str(out) else ""
        raise OSError(e.errno, f"-o {out}: cannot write the page: {e.strerror or e}{where}") from e
    print(f"wrote {path}" + (f": {done}" if done else ""))


if __name__ == "__main__":  # `python -m trainer.eval.report ...` (the same as `fgrlhf report ...`)
    _parser = argparse.ArgumentParser(
        prog="fgrlhf report", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    add_arguments(_parser)
    sys.exit(run_cli(_parser.parse_args()))
