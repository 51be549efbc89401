"""One document, two renderings: Markdown (figures as links beside it) and self-contained HTML (figures inline)."""

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Doc:
    """Blocks in order: ("h", level, text), ("p", text), ("table", header, rows), ("figure", file, caption),
    ("details", summary, preformatted text). Text may use `code` and **bold**."""

    blocks: list[tuple] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", header, rows))

    def figure(self, file: str, caption: str) -> None:
        self.blocks.append(("figure", file, caption))

    def details(self, summary: str, text: str) -> None:
        self.blocks.append(("details", summary, text))

    def markdown(self) -> str:
        out = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append(f"{'#' * block[1]} {block[2]}")
            elif kind == "p":
                out.append(block[1])
            elif kind == "table":
                header, rows = block[1], block[2]
                cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
                out.append("\n".join(
                    [f"| {' | '.join(map(cell, header))} |", f"|{'|'.join(' --- ' for _ in header)}|"]
                    + [f"| {' | '.join(map(cell, row))} |" for row in rows]))
            elif kind == "figure":
                out.append(f"![{Path(block[1]).name}]({block[1]})\n\n*{block[2]}*")
            elif kind == "details":
                out.append(f"<details><summary>{block[1]}</summary>\n\n```\n{block[2].rstrip()}\n```\n\n</details>")
        return "\n\n".join(out) + "\n"

    def html(self, folder: Path, title: str) -> str:
        """HTML with every figure as a base64 PNG, so the file alone is the whole report."""
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
               "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
               "table{border-collapse:collapse;margin:1em 0;font-size:90%}"
               "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}th{background:#eee}"
               "img{max-width:100%}figcaption{font-style:italic;font-size:90%}"
               "code{background:#f3f3f3}pre{background:#f6f6f6;padding:.5em;overflow-x:auto}</style>",
               "</head><body>"]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append(f"<h{block[1]}>{_inline(block[2])}</h{block[1]}>")
            elif kind == "p":
                out.append(_paragraph(block[1]))
            elif kind == "table":
                head = "".join(f"<th>{_inline(str(h))}</th>" for h in block[1])
                body = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>"
                               for row in block[2])
                out.append(f"<table><tr>{head}</tr>{body}</table>")
            elif kind == "figure":
                data = base64.b64encode((folder / block[1]).read_bytes()).decode()
                out.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(block[2])}'>"
                           f"<figcaption>{_inline(block[2])}</figcaption></figure>")
            elif kind == "details":
                out.append(f"<details><summary>{_inline(block[1])}</summary><pre>{html.escape(block[2])}</pre>"
                           "</details>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"


def _paragraph(text: str) -> str:
    """Paragraphs (split at blank lines); lines starting with `- ` become list items (two spaces deeper: nested)."""
    out, depth = [], 0
    for part in text.split("\n\n"):
        lines = part.split("\n")
        if not any(line.lstrip().startswith("- ") for line in lines):
            out.append(f"<p>{_inline(part)}</p>")
            continue
        for line in lines:
            item = line.lstrip()
            if item.startswith("- "):
                level = (len(line) - len(item)) // 2 + 1
                out += ["<ul>"] * (level - depth) + ["</ul>"] * (depth - level)
                depth = level
                out.append(f"<li>{_inline(item[2:])}</li>")
            elif item:
                out += ["</ul>"] * depth
                depth = 0
                out.append(f"<p>{_inline(item)}</p>")
        out += ["</ul>"] * depth
        depth = 0
    return "".join(out)


def _inline(text: str) -> str:
    """The little Markdown the report uses in text: `code`, **bold**, *italic* and line breaks."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<i>\1</i>", text)
    return text.replace("\n", "<br>")
