def test_base_endpoint_challenges_for_a_token(msr, registry):
    response = registry().request("GET", "/v2/")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == f'Bearer realm="{msr}/auth/token",service="msr"'
    assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"
