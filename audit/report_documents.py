"""A report as files to keep: self-contained HTML (inline CSS, no links out), a PDF of it
where WeasyPrint is installed, and a ZIP of them with their manifest.

The PDF is rendered from the HTML alone: the fetcher refuses every URL that is not a
`data:` URL, so rendering never reaches the network or the file system.
"""

from __future__ import annotations

import io
import logging
import zipfile
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from django.template.loader import render_to_string
from django.utils.safestring import SafeString, mark_safe

logger = logging.getLogger(__name__)

DOCUMENT_TEMPLATE = "admin/audit/reports/document.html"
# The reports' styles: the admin page links this static file; the document carries it inline.
STYLESHEET = Path(__file__).resolve().parent / "static" / "audit" / "report.css"


@cache
def stylesheet() -> SafeString:
    """The reports' CSS, for the document's <style> (our own file, not user input)."""
    return mark_safe(STYLESHEET.read_text(encoding="utf-8"))


@cache
def _weasyprint():
    """WeasyPrint, imported on first use (it is slow to import), or None where it or the
    Pango it needs is missing: then there is no PDF, only HTML."""
    try:
        import weasyprint
    except (ImportError, OSError) as exc:  # OSError: the package is there, Pango is not
        logger.warning("No PDF for audit reports: %s", exc)
        return None
    return weasyprint


def pdf_available() -> bool:
    return _weasyprint() is not None


def render_html(*, body_template: str, title: str, context: dict[str, Any]) -> bytes:
    """The report as one HTML file that needs nothing else to be read or printed."""
    html = render_to_string(
        DOCUMENT_TEMPLATE,
        {
            **context,
            "title": title,
            "body_template": body_template,
            "standalone": True,
            "stylesheet": stylesheet(),
        },
    )
    return html.encode("utf-8")


@cache
def offline_fetcher_class():
    weasyprint = _weasyprint()

    class OfflineFetcher(weasyprint.urls.URLFetcher):
        """Fetches `data:` URLs only; anything else (http, file, …) is refused."""

        def fetch(self, url, headers=None):
            if not url.lower().startswith("data:"):
                raise ValueError(f"An audit report fetches nothing: {url[:80]} refused.")
            return super().fetch(url, headers)

    return OfflineFetcher


def render_pdf(html: bytes) -> bytes | None:
    """The HTML as a PDF, or None where WeasyPrint is not installed."""
    weasyprint = _weasyprint()
    if weasyprint is None:
        return None
    document = weasyprint.HTML(
        string=html.decode("utf-8"), base_url=None, url_fetcher=offline_fetcher_class()()
    )
    return document.write_pdf()


def zip_bundle(files: dict[str, bytes], *, made_at: datetime) -> bytes:
    """The files in one ZIP, in the order given, each dated `made_at` (UTC)."""
    stamp = made_at.astimezone(UTC).timetuple()[:6]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o600 << 16  # confidential: readable by its owner only
            archive.writestr(info, content)
    return buffer.getvalue()
