"""A relying party written with Authlib (not by this project) against perfect21's
OpenID provider, for tests/oidc.rs.

For every client in $CLIENTS: the authorization code flow with PKCE (the login
form filled as a browser would), the ID token checked against the discovery
document and the JWKS (signature, iss, aud, nonce, exp), userinfo, a refresh
(rotation; the old refresh token then refused), introspection, revocation, and
RP-initiated logout. Then the client-credentials grant of a service account.
Prints one JSON summary line; any failed check raises.
"""

import json
import os
import re

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from authlib.jose import JsonWebKey, jwt

ISSUER = os.environ["ISSUER"]
CLIENTS = json.loads(os.environ["CLIENTS"])
SERVICE_ACCOUNT = json.loads(os.environ["SERVICE_ACCOUNT"])
USERNAME = os.environ["USERNAME"]
PASSWORD = os.environ["PASSWORD"]


def check(condition, message):
    if not condition:
        raise AssertionError(message)


meta = requests.get(ISSUER + "/.well-known/openid-configuration", timeout=10).json()
check(meta["issuer"] == ISSUER, f"issuer {meta['issuer']} != {ISSUER}")
check("S256" in meta["code_challenge_methods_supported"], "PKCE S256 advertised")
jwks = JsonWebKey.import_key_set(requests.get(meta["jwks_uri"], timeout=10).json())


def sign_in(browser, url):
    """Opens the authorization URL; fills the login form if one is shown. The redirect back."""
    page = browser.get(url, allow_redirects=False, timeout=10)
    if page.status_code == 303:
        return page.headers["Location"]
    check(page.status_code == 200, f"login page: {page.status_code} {page.text}")
    form = dict(re.findall(r'name="(request|csrf|step)" value="([^"]*)"', page.text))
    form.update(identifier=USERNAME, password=PASSWORD)
    done = browser.post(meta["authorization_endpoint"], data=form, allow_redirects=False, timeout=10)
    check(done.status_code == 303, f"sign-in: {done.status_code} {done.text}")
    return done.headers["Location"]


def id_token_claims(token, client, nonce):
    options = {
        "iss": {"essential": True, "value": ISSUER},
        "aud": {"essential": True, "value": client["id"]},
        "sub": {"essential": True},
        "exp": {"essential": True},
    }
    if nonce is not None:
        options["nonce"] = {"essential": True, "value": nonce}
    claims = jwt.decode(token, jwks, claims_options=options)
    claims.validate()
    check(claims.header["alg"] == client["alg"], f"alg {claims.header['alg']} != {client['alg']}")
    return claims


algs = []
for client in CLIENTS:
    browser = requests.Session()
    public = client["secret"] is None
    session = OAuth2Session(
        client["id"],
        client["secret"],
        scope="openid profile email",
        redirect_uri=client["redirect"],
        code_challenge_method="S256",
        token_endpoint_auth_method="none" if public else "client_secret_basic",
    )
    verifier = generate_token(64)
    nonce = generate_token(20)
    url, state = session.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier, nonce=nonce)
    location = sign_in(browser, url)
    token = session.fetch_token(meta["token_endpoint"], authorization_response=location, code_verifier=verifier)
    claims = id_token_claims(token["id_token"], client, nonce)
    check(claims["email"] == f"{USERNAME}@example.com", f"email claim: {claims}")
    check(claims["preferred_username"] == USERNAME, f"profile claim: {claims}")
    check(claims["amr"] == ["pwd"] and "auth_time" in claims, f"amr/auth_time: {claims}")
    algs.append(claims.header["alg"])

    info = session.get(meta["userinfo_endpoint"], timeout=10).json()
    check(info["sub"] == claims["sub"] and info["email_verified"] is True, f"userinfo: {info}")

    old_refresh = token["refresh_token"]
    refreshed = session.refresh_token(meta["token_endpoint"], refresh_token=old_refresh)
    check(refreshed["refresh_token"] != old_refresh, "the refresh token rotates")
    refreshed_claims = id_token_claims(refreshed["id_token"], client, None)
    check(refreshed_claims["sub"] == claims["sub"], "same subject after refresh")
    check(refreshed_claims["auth_time"] == claims["auth_time"], "auth_time kept across refreshes")

    if not public:
        auth = (client["id"], client["secret"])
        intro = requests.post(meta["introspection_endpoint"], data={"token": refreshed["access_token"]}, auth=auth, timeout=10).json()
        check(intro["active"] is True and intro["client_id"] == client["id"], f"introspection: {intro}")
        check(intro["sub"] == claims["sub"] and "openid" in intro["scope"].split(), f"introspection: {intro}")

    revoked = session.revoke_token(meta["revocation_endpoint"], refreshed["access_token"], token_type_hint="access_token")
    check(revoked.status_code == 200, f"revocation: {revoked.status_code} {revoked.text}")
    after = session.get(meta["userinfo_endpoint"], timeout=10)
    check(after.status_code == 401, f"userinfo after revocation: {after.status_code}")

    # Reusing the rotated-away refresh token is refused (and ends the session).
    try:
        session.refresh_token(meta["token_endpoint"], refresh_token=old_refresh)
        raise AssertionError("a reused refresh token was accepted")
    except OAuthError as e:
        check(e.error == "invalid_grant", f"reuse: {e.error}")

    # RP-initiated logout back to the registered URI, with the state.
    logout = browser.get(
        meta["end_session_endpoint"],
        params={
            "id_token_hint": token["id_token"],
            "post_logout_redirect_uri": "https://rp.example.com/signed-out",
            "state": "bye",
        }
        if not public
        else {"id_token_hint": token["id_token"]},
        allow_redirects=False,
        timeout=10,
    )
    if public:
        check(logout.status_code == 200 and "signed out" in logout.text, f"logout page: {logout.status_code}")
    else:
        check(logout.status_code == 303, f"logout: {logout.status_code} {logout.text}")
        check(logout.headers["Location"] == "https://rp.example.com/signed-out?state=bye", logout.headers["Location"])
    again = browser.get(url, allow_redirects=False, timeout=10)
    check(again.status_code == 200 and 'name="password"' in again.text, "after logout the login form is shown")

machine = OAuth2Session(SERVICE_ACCOUNT["id"], SERVICE_ACCOUNT["secret"])
machine_token = machine.fetch_token(meta["token_endpoint"], grant_type="client_credentials")
check(machine_token["token_type"] == "Bearer" and machine_token["expires_in"] > 0, f"client credentials: {machine_token}")

print(json.dumps({"flows": len(CLIENTS), "id_token_algs": algs}))
