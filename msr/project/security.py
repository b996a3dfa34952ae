"""Response headers of the web pages that the settings do not cover."""

from django.conf import settings


class ContentSecurityPolicyMiddleware:
    """`Content-Security-Policy` (MSR_CSP) on HTML responses: the registry's JSON and blob
    answers do not need it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        policy = settings.CONTENT_SECURITY_POLICY
        if policy and response.get("Content-Type", "").startswith("text/html") \
                and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = policy
        return response


class ClientGoneMiddleware:
    """A request whose body stopped arriving (the client went away, stalled, or sent too
    slowly: caches/httpserver.py shut the connection) is not a server error: answer 400,
    log a line, and let the connection close."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        import logging

        from django.http import HttpResponse, UnreadablePostError

        if isinstance(exception, UnreadablePostError):
            logging.getLogger("msr.http").info("%s %s: the request body stopped arriving (%s)",
                                                request.method, request.path, exception)
            response = HttpResponse("the request body stopped arriving\n", status=400, content_type="text/plain")
            response["Connection"] = "close"
            return response
        return None
