"""Schemathesis hooks: every test case of an operation that takes a bearer token signs
in afresh as the account named by PERFECT21_ST_IDENTIFIER / PERFECT21_ST_PASSWORD (none:
anonymous), so that an operation that ends the caller's session (logout, revoke) cannot
spoil the next case. Public operations get no token.

The step-up operations (`/api/v1/auth/mfa/*`) take the caller's password: wrong
passwords count towards the account's lockout, as they should. Those cases run as a
user registered for the case alone, so that the named account stays usable."""

import os
import uuid

import requests
import schemathesis

BASE = os.environ["PERFECT21_ST_BASE"]
IDENTIFIER = os.environ.get("PERFECT21_ST_IDENTIFIER")
PASSWORD = os.environ.get("PERFECT21_ST_PASSWORD")
STEP_UP = "/api/v1/auth/mfa/"


def login(identifier, password):
    res = requests.post(
        f"{BASE}/api/v1/auth/login", json={"identifier": identifier, "password": password}, timeout=10
    )
    res.raise_for_status()
    return res.json()["access_token"]


def disposable_user():
    """A verified user of its own (the server runs with --dev: registration answers the token)."""
    name = f"st-{uuid.uuid4().hex[:20]}"
    password = "disposable password"
    res = requests.post(
        f"{BASE}/api/v1/auth/register",
        json={"email": f"{name}@example.com", "username": name, "password": password},
        timeout=10,
    )
    res.raise_for_status()
    token = res.json()["verification_token"]
    requests.post(f"{BASE}/api/v1/auth/verify-email", json={"token": token}, timeout=10).raise_for_status()
    return login(name, password)


def takes_bearer(case):
    return any("bearer" in requirement for requirement in case.operation.definition.raw.get("security", []))


if IDENTIFIER:

    @schemathesis.auth(refresh_interval=None)
    class FreshLogin:
        def get(self, case, ctx):
            if not takes_bearer(case):
                return None
            if case.operation.path.startswith(STEP_UP):
                return disposable_user()
            return login(IDENTIFIER, PASSWORD)

        def set(self, case, data, ctx):
            if data is not None:
                case.headers = case.headers or {}
                case.headers["Authorization"] = f"Bearer {data}"
