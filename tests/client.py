"""A small registry client on `requests` for the protocol tests: it gets tokens from the
token service exactly as Docker does and speaks the /v2/ API."""

import hashlib
import json

import requests


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    def __init__(self, url: str, username: str | None = None, secret: str | None = None):
        self.url = url
        self.auth = (username, secret) if username else None
        self.session = requests.Session()

    def token_response(self, *scopes, **params) -> requests.Response:
        query = [("service", "msr"), *[("scope", s) for s in scopes], *params.items()]
        return self.session.get(f"{self.url}/auth/token", params=query, auth=self.auth, timeout=30)

    def token(self, *scopes) -> str:
        response = self.token_response(*scopes)
        assert response.status_code == 200, response.text
        return response.json()["token"]

    def granted(self, name: str, *actions) -> set[str]:
        import jwt

        token = self.token(f"repository:{name}:{','.join(actions)}")
        claims = jwt.decode(token, options={"verify_signature": False})
        return {a for entry in claims["access"] if entry["name"] == name for a in entry["actions"]}

    def request(self, method, path, scope=None, token=None, headers=None, **kwargs) -> requests.Response:
        headers = dict(headers or {})
        if token is None and scope is not None:
            token = self.token(scope)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self.session.request(method, f"{self.url}{path}", headers=headers, timeout=60,
                                    allow_redirects=False, **kwargs)

    # -- helpers for common operations ------------------------------------------------

    def push_blob(self, name: str, data: bytes) -> requests.Response:
        token = self.token(f"repository:{name}:pull,push")
        return self.request("POST", f"/v2/{name}/blobs/uploads/?digest={sha256(data)}",
                            token=token, data=data)

    def push_manifest(self, name: str, reference: str, document: dict | bytes,
                      media_type="application/vnd.oci.image.manifest.v1+json") -> requests.Response:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        return self.request("PUT", f"/v2/{name}/manifests/{reference}",
                            scope=f"repository:{name}:pull,push", data=body,
                            headers={"Content-Type": media_type})

    def push_image(self, name: str, reference: str, layers=(b"layer-one", b"layer-two"),
                   subject=None, artifact_type=None) -> tuple[str, requests.Response]:
        """Push config + layers + manifest; returns (manifest digest, manifest response)."""
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
            "type": "layers", "diff_ids": [sha256(layer) for layer in layers]}}).encode()
        for blob in (config, *layers):
            response = self.push_blob(name, blob)
            assert response.status_code == 201, response.text
        document = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": sha256(layer), "size": len(layer)} for layer in layers],
        }
        if subject:
            document["subject"] = subject
        if artifact_type:
            document["artifactType"] = artifact_type
        body = json.dumps(document).encode()
        return sha256(body), self.push_manifest(name, reference, body)


def signed_in_page_client(user):
    """Django's test client signed in as `user` as the database has it now: other tests
    change passwords, and a session made from a stale password hash is signed out at once
    (the request then redirects to the sign-in page)."""
    from django.test import Client

    user.refresh_from_db()
    client = Client()
    client.force_login(user)
    return client
