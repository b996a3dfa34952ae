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
