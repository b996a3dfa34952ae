"""OpenAPI post-processing: every operation documents the errors it can answer, in the
API's error format, so that clients (and the schema fuzz test) know every response."""

ERROR = {
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}
FIELD_ERRORS = {
    "type": "object",
    "description": "field name → messages (or `detail` for a request-wide error)",
    "additionalProperties": {"oneOf": [
        {"type": "array", "items": {"type": "string"}},
        {"type": "string"},
        {"type": "object"},
    ]},
}
DESCRIPTIONS = {
    "400": ("Invalid input: messages per field", "FieldErrors"),
    "401": ("No or invalid credentials", "Error"),
    "403": ("Signed in, but not allowed", "Error"),
    "404": ("Not found, or not visible to the caller", "Error"),
    "429": ("Too many failed sign-ins from this address or for this account: retry after the "
            "Retry-After header's seconds", "Error"),
}


def add_error_responses(result, generator, request, public):
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR
    schemas["FieldErrors"] = FIELD_ERRORS
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            responses = operation.setdefault("responses", {})
            for code, (description, schema) in DESCRIPTIONS.items():
                if code == "400" and method in ("get", "delete") and not operation.get("parameters"):
                    continue
                responses.setdefault(code, {
                    "description": description,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
                })
    return result
