"""Refuse oversized bodies from their headers, before reading a byte of them."""
from __future__ import annotations

import cherrypy
from cherrypy import _cpreqbody


def reject_oversized_body(limit: int) -> None:
    """on_start_resource: 413 when Content-Length exceeds ``limit``.

    Chunked bodies are stopped by ``request.body.maxbytes`` (CherryPy counts as it reads);
    both end in the same JSON error via the app's error page.
    """
    length = cherrypy.request.headers.get("Content-Length")
    if length is not None and length.isascii() and length.isdigit() and (
            len(length) > 18 or int(length) > limit):  # 19+ digits: past any limit
        cherrypy.response.headers["Connection"] = "close"  # the unread body must not be parsed
        cherrypy.request.process_request_body = False
        raise cherrypy.HTTPError(413, f"The request body is larger than {limit} bytes.")


cherrypy.tools.body_limit = cherrypy.Tool("on_start_resource", reject_oversized_body)


def _checked_multipart(process):
    """Wrap CherryPy's multipart parser: a malformed body is the client's 400, not a 500."""

    def processor(entity) -> None:
        try:
            process(entity)
        except (ValueError, EOFError) as exc:  # bad boundary, broken part headers, cut short
            raise cherrypy.HTTPError(400, f"The multipart body is malformed: {exc}") from None

    return processor


# CherryPy parses the body before any handler runs and raises bare ValueError/EOFError on
# malformed multipart (-> 500). Every multipart processor (form-data, the generic one that
# RequestBody installs, nested parts) calls this module global at request time.
_cpreqbody.process_multipart = _checked_multipart(_cpreqbody.process_multipart)
