"""Request body parsers of the REST API: JSON bounded in depth (msr/jsonsafe.py), so that
a deeply nested body is a 400 like any other malformed one, never a RecursionError."""

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from msr import jsonsafe


class BoundedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return jsonsafe.loads(stream.read() if stream is not None else b"")
        except UnicodeDecodeError:
            raise ParseError("JSON parse error: not UTF-8") from None
        except ValueError as e:
            raise ParseError(f"JSON parse error: {e}") from None
