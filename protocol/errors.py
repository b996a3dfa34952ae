"""The OCI distribution error body, `{"errors": [{"code", "message", "detail"}]}`
(distribution spec, "Error Codes"). Rendered by MSR's registry errors
(msr/registry/errors.py) and by the cache node (caches/node.py)."""

import json


def error_document(code: str, message: str, detail=None) -> dict:
    """The document of one error; `detail` only when there is one."""
    error = {"code": code, "message": message}
    if detail is not None:
        error["detail"] = detail
    return {"errors": [error]}


def error_body(code: str, message: str, detail=None) -> bytes:
    """The JSON body of one error."""
    return json.dumps(error_document(code, message, detail)).encode()
