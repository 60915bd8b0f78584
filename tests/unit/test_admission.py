"""admission.decide: every handshake and HTTP decision of PROTOCOL.md, without a socket."""

from __future__ import annotations

import http
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.datastructures import Headers

from alphaflow_live.codes import (
    ADMIN_PATH,
    HEALTH_PATH,
    INGEST_PATH,
    METRICS_PATH,
    PORTFOLIO_PATH,
    SESSION_COOKIE,
    SNAPSHOT_PATH,
    STATS_PATH,
    TOKEN_QUERY_PARAMETERS,
    Refusal,
)
from alphaflow_server.admission import (
    ROUTES,
    OpenStream,
    Refused,
    RestRoute,
    ServePublic,
    ServeRest,
    StreamRoute,
    bearer_or_cookie,
    decide,
)
from alphaflow_server.auth import Principal, Role, TokenStore
from alphaflow_server.http_api import refusal
from alphaflow_server.limits import ConnectionLimiter

PROPERTY = settings(max_examples=300, deadline=None)
NOW = 12.5

STORE = TokenStore()
TOKENS: dict[Role, str] = {
    "user": STORE.add("alice", "user"),
    "service": STORE.add("svc", "service"),
    "admin": STORE.add("ops", "admin"),
}
NAMES: dict[Role, str] = {"user": "alice", "service": "svc", "admin": "ops"}
STREAM_PATHS = [path for path, route in ROUTES.items() if isinstance(route, StreamRoute)]
REST_PATHS = [path for path, route in ROUTES.items() if isinstance(route, RestRoute)]


def bearer(role: Role = "user") -> Headers:
    return Headers({"Authorization": f"Bearer {TOKENS[role]}"})


def admit(
    target: str,
    headers: Headers | None = None,
    *,
    streaming_enabled: bool = True,
    limiter: ConnectionLimiter | None = None,
) -> Any:
    return decide(
        target,
        headers if headers is not None else Headers(),
        NOW,
        authenticate=STORE.authenticate,
        streaming_enabled=streaming_enabled,
        capacity=limiter or ConnectionLimiter(max_total=100, max_per_user=5),
    )


def refused(decision: Any) -> Refused:
    assert isinstance(decision, Refused), f"expected a refusal, got {decision!r}"
    return decision


def role_of(path: str) -> Role:
    route = ROUTES[path]
    assert isinstance(route, StreamRoute | RestRoute)
    return route.role


# ------------------------------------------------------------ the route table


def test_the_route_table_holds_every_path_of_the_protocol() -> None:
    assert set(ROUTES) == {
        PORTFOLIO_PATH,
        INGEST_PATH,
        ADMIN_PATH,
        SNAPSHOT_PATH,
        STATS_PATH,
        HEALTH_PATH,
        METRICS_PATH,
    }
    assert [role_of(p) for p in (PORTFOLIO_PATH, INGEST_PATH, ADMIN_PATH)] == ["user", "service", "admin"]
    assert [role_of(p) for p in (SNAPSHOT_PATH, STATS_PATH)] == ["user", "admin"]


# ---------------------------------------------------------- credentials in URL


@pytest.mark.parametrize("name", sorted(TOKEN_QUERY_PARAMETERS))
@pytest.mark.parametrize("spelling", [str.lower, str.upper, str.title])
def test_a_credential_parameter_in_the_url_is_refused_with_400(name: str, spelling: Any) -> None:
    decision = refused(admit(f"{PORTFOLIO_PATH}?x=1&{spelling(name)}={TOKENS['user']}", bearer()))

    assert (decision.status, decision.code) == (http.HTTPStatus.BAD_REQUEST, Refusal.TOKEN_IN_URL)
    assert decision.message == (
        "credentials in the URL are refused; send 'Authorization: Bearer <token>' "
        "or the alphaflow_session cookie"
    )
    assert TOKENS["user"] not in decision.message


@pytest.mark.parametrize("path", [*ROUTES, "/ws/elsewhere"])
def test_a_credential_in_the_url_is_refused_on_every_path_even_public_and_unknown_ones(path: str) -> None:
    assert refused(admit(f"{path}?token=")).code is Refusal.TOKEN_IN_URL


def test_other_query_parameters_are_not_credentials() -> None:
    decision = admit(f"{PORTFOLIO_PATH}?tokens=1&session_id=2&api_keys=3", bearer())

    assert isinstance(decision, OpenStream)


# ------------------------------------------------------------- routing, tokens


def test_an_unknown_path_is_refused_with_404_before_any_token_check() -> None:
    decision = refused(admit("/ws/elsewhere?x=1"))

    assert (decision.status, decision.code) == (http.HTTPStatus.NOT_FOUND, Refusal.NOT_FOUND)
    assert decision.message == "no endpoint at /ws/elsewhere"


def test_a_target_that_is_no_url_is_refused_with_404_not_an_error() -> None:
    assert refused(admit("//[not-a-url")).code is Refusal.NOT_FOUND


@pytest.mark.parametrize("path", [*STREAM_PATHS, *REST_PATHS])
def test_a_missing_token_is_refused_with_401_and_a_bearer_challenge(path: str) -> None:
    decision = refused(admit(path))

    assert (decision.status, decision.code) == (http.HTTPStatus.UNAUTHORIZED, Refusal.MISSING_TOKEN)
    assert decision.headers == (("WWW-Authenticate", "Bearer"),)
    assert decision.message == (
        "no credentials: send 'Authorization: Bearer <token>' (create one with alphaflow-live users add)"
    )


@pytest.mark.parametrize("path", [*STREAM_PATHS, *REST_PATHS])
def test_an_unknown_token_is_refused_with_401_invalid_token(path: str) -> None:
    decision = refused(admit(path, Headers({"Authorization": "Bearer afl_not-a-real-token"})))

    assert (decision.status, decision.code) == (http.HTTPStatus.UNAUTHORIZED, Refusal.INVALID_TOKEN)
    assert decision.headers == (("WWW-Authenticate", 'Bearer error="invalid_token"'),)
    assert decision.message == "token rejected: unknown token (run alphaflow-live users add, or users rotate)"


@pytest.mark.parametrize(
    ("path", "role"),
    [(p, r) for p in (*STREAM_PATHS, *REST_PATHS) for r in TOKENS if r != role_of(p)],
)
def test_a_token_of_the_wrong_role_is_refused_with_403_naming_both_roles(path: str, role: Role) -> None:
    decision = refused(admit(path, bearer(role)))

    assert (decision.status, decision.code) == (http.HTTPStatus.FORBIDDEN, Refusal.WRONG_ROLE)
    assert decision.message == f"{path} needs a token of role '{role_of(path)}'; this token has role '{role}'"


@pytest.mark.parametrize("path", STREAM_PATHS)
def test_a_token_of_the_right_role_opens_its_stream(path: str) -> None:
    route = ROUTES[path]
    assert isinstance(route, StreamRoute)

    decision = admit(path, bearer(route.role))

    assert decision == OpenStream(
        route.stream, Principal(NAMES[route.role], route.role), route.stream == "portfolio", NOW
    )


@pytest.mark.parametrize(("path", "endpoint"), [(SNAPSHOT_PATH, "snapshot"), (STATS_PATH, "stats")])
def test_a_token_of_the_right_role_is_served_its_rest_endpoint(path: str, endpoint: str) -> None:
    role = role_of(path)

    decision = admit(path, bearer(role))

    assert isinstance(decision, ServeRest)
    assert (decision.endpoint, decision.principal) == (endpoint, Principal(NAMES[role], role))


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer afl_not-a-real-token"}, {"Authorization": "Basic x"}]
)
@pytest.mark.parametrize(("path", "endpoint"), [(HEALTH_PATH, "healthz"), (METRICS_PATH, "metrics")])
def test_public_endpoints_need_no_token(path: str, endpoint: str, headers: dict[str, str]) -> None:
    decision = admit(path, Headers(headers))

    assert isinstance(decision, ServePublic)
    assert decision.endpoint == endpoint


# ------------------------------------------------------------ bearer or cookie


def test_the_session_cookie_is_a_credential() -> None:
    headers = Headers({"Cookie": f"theme=dark; {SESSION_COOKIE}={TOKENS['user']}; lang=en"})

    decision = admit(PORTFOLIO_PATH, headers)

    assert isinstance(decision, OpenStream)
    assert decision.principal == Principal("alice", "user")


def test_a_quoted_session_cookie_is_a_credential() -> None:
    assert bearer_or_cookie(Headers({"Cookie": f'{SESSION_COOKIE}="{TOKENS["user"]}"'})) == TOKENS["user"]


def test_the_bearer_header_wins_over_the_cookie() -> None:
    headers = Headers({"Authorization": f"Bearer {TOKENS['admin']}", "Cookie": f"{SESSION_COOKIE}=other"})

    assert bearer_or_cookie(headers) == TOKENS["admin"]


def test_another_authorization_scheme_is_no_credential_even_beside_a_cookie() -> None:
    headers = Headers({"Authorization": f"Basic {TOKENS['user']}", "Cookie": f"{SESSION_COOKIE}=x"})

    assert refused(admit(PORTFOLIO_PATH, headers)).code is Refusal.MISSING_TOKEN


def test_several_authorization_headers_are_no_credential() -> None:
    headers = Headers([("Authorization", f"Bearer {TOKENS['user']}"), ("Authorization", "Bearer other")])

    assert refused(admit(PORTFOLIO_PATH, headers)).code is Refusal.MISSING_TOKEN


@pytest.mark.parametrize(
    "headers",
    [
        {"Cookie": "alphaflow=x; session=y"},
        {"Cookie": f"{SESSION_COOKIE}="},
        {"Authorization": "Bearer   "},
        {"X-Token": "x"},
    ],
)
def test_nothing_else_counts_as_a_credential(headers: dict[str, str]) -> None:
    assert bearer_or_cookie(Headers(headers)) is None


# ----------------------------------------------------------- streaming flag


def test_streaming_disabled_refuses_the_portfolio_stream_with_503_and_the_fallback() -> None:
    decision = refused(admit(PORTFOLIO_PATH, bearer(), streaming_enabled=False))

    assert (decision.status, decision.code) == (
        http.HTTPStatus.SERVICE_UNAVAILABLE,
        Refusal.STREAMING_DISABLED,
    )
    assert decision.fields == (("fallback", SNAPSHOT_PATH),)
    assert decision.message == f"streaming is switched off by the operator; poll {SNAPSHOT_PATH}"


@pytest.mark.parametrize("path", [INGEST_PATH, ADMIN_PATH, SNAPSHOT_PATH, STATS_PATH])
def test_streaming_disabled_leaves_every_other_route_served(path: str) -> None:
    decision = admit(path, bearer(role_of(path)), streaming_enabled=False)

    assert isinstance(decision, OpenStream | ServeRest)


def test_streaming_disabled_is_answered_only_after_authentication() -> None:
    assert refused(admit(PORTFOLIO_PATH, streaming_enabled=False)).code is Refusal.MISSING_TOKEN
    assert refused(admit(PORTFOLIO_PATH, bearer("admin"), streaming_enabled=False)).code is Refusal.WRONG_ROLE


# ----------------------------------------------------------- connection limits


def test_the_per_user_limit_refuses_the_portfolio_stream_with_429() -> None:
    limiter = ConnectionLimiter(max_total=100, max_per_user=2)
    limiter.acquire("alice")
    limiter.acquire("alice")

    decision = refused(admit(PORTFOLIO_PATH, bearer(), limiter=limiter))

    assert (decision.status, decision.code) == (
        http.HTTPStatus.TOO_MANY_REQUESTS,
        Refusal.TOO_MANY_CONNECTIONS,
    )
    assert decision.headers == (("Retry-After", "5"),)
    assert decision.message == (
        "user 'alice' already has 2 connections (the per-user limit); close one first"
    )


@pytest.mark.parametrize("role", ["service", "admin"])
def test_service_and_admin_streams_are_exempt_from_the_per_user_limit(role: Role) -> None:
    limiter = ConnectionLimiter(max_total=100, max_per_user=1)
    for _ in range(3):
        limiter.acquire(NAMES[role], per_user_limit=False)
    path = INGEST_PATH if role == "service" else ADMIN_PATH

    decision = admit(path, bearer(role), limiter=limiter)

    assert isinstance(decision, OpenStream)
    assert decision.per_user_limit is False


@pytest.mark.parametrize("path", STREAM_PATHS)
def test_the_total_limit_refuses_every_stream_with_503(path: str) -> None:
    limiter = ConnectionLimiter(max_total=2, max_per_user=5)
    limiter.acquire("bob")
    limiter.acquire("carol")

    decision = refused(admit(path, bearer(role_of(path)), limiter=limiter))

    assert (decision.status, decision.code) == (http.HTTPStatus.SERVICE_UNAVAILABLE, Refusal.SERVER_FULL)
    assert decision.headers == (("Retry-After", "5"),)
    assert decision.message == "the server holds its maximum of 2 connections; retry later"


def test_the_total_limit_is_reported_before_the_per_user_one() -> None:
    limiter = ConnectionLimiter(max_total=2, max_per_user=2)
    limiter.acquire("alice")
    limiter.acquire("alice")

    assert refused(admit(PORTFOLIO_PATH, bearer(), limiter=limiter)).code is Refusal.SERVER_FULL


def test_rest_endpoints_are_served_whatever_the_connection_counts() -> None:
    limiter = ConnectionLimiter(max_total=1, max_per_user=1)
    limiter.acquire("alice")

    assert isinstance(admit(SNAPSHOT_PATH, bearer(), limiter=limiter), ServeRest)


def test_an_admission_counts_nothing() -> None:
    limiter = ConnectionLimiter(max_total=100, max_per_user=1)

    first = admit(PORTFOLIO_PATH, bearer(), limiter=limiter)
    second = admit(PORTFOLIO_PATH, bearer(), limiter=limiter)

    assert isinstance(first, OpenStream)
    assert first == second
    assert (limiter.total, dict(limiter.per_user)) == (0, {})


# ------------------------------------------------------------ refusal bodies


def test_a_refusal_body_is_error_then_message() -> None:
    response = refusal(refused(admit("/nowhere")))

    assert (response.status_code, response.body) == (
        404,
        b'{"error":"not_found","message":"no endpoint at /nowhere"}',
    )


def test_the_streaming_disabled_body_carries_the_fallback_before_the_message() -> None:
    response = refusal(refused(admit(PORTFOLIO_PATH, bearer(), streaming_enabled=False)))

    assert (response.status_code, response.body) == (
        503,
        b'{"error":"streaming_disabled","fallback":"/api/portfolio/snapshot",'
        b'"message":"streaming is switched off by the operator; poll /api/portfolio/snapshot"}',
    )


def test_a_refusal_response_carries_its_headers() -> None:
    response = refusal(refused(admit(PORTFOLIO_PATH)))

    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.headers["Content-Type"] == "application/json"


# ------------------------------------------------------------------ properties

paths = st.one_of(
    st.sampled_from([*ROUTES, "/", "/ws", "/ws/portfolio/", "//[x", "/api"]),
    # No "#" (clients keep fragments to themselves) and no "?" (the query comes next).
    st.text(alphabet=st.characters(codec="ascii", exclude_characters="\r\n#?"), max_size=30).map(
        lambda text: "/" + text
    ),
)
query_text = st.text(alphabet=st.characters(exclude_characters="#"), max_size=8)
queries = st.lists(
    st.tuples(
        st.one_of(st.sampled_from([*TOKEN_QUERY_PARAMETERS, "TOKEN", "x", "session_id"]), query_text),
        query_text,
    ),
    max_size=3,
)
# What a header value may hold (websockets refuses control characters before any server sees them).
header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
credentials = st.one_of(
    st.sampled_from([f"Bearer {token}" for token in TOKENS.values()]),
    st.sampled_from(["Bearer afl_bogus", "Basic abc", "Bearer", "bearer  x ", ""]),
    header_text,
)
header_lists = st.lists(
    st.one_of(
        credentials.map(lambda value: ("Authorization", value)),
        st.one_of(st.sampled_from(list(TOKENS.values())), header_text).map(
            lambda value: ("Cookie", f"{SESSION_COOKIE}={value}")
        ),
        header_text.map(lambda value: ("Cookie", value)),
    ),
    max_size=3,
)


def target_of(path: str, query: list[tuple[str, str]]) -> str:
    if not query:
        return path
    return path + "?" + "&".join(f"{name}={value}" for name, value in query)


@PROPERTY
@given(
    paths,
    queries,
    header_lists,
    st.booleans(),
    st.integers(0, 3),
    st.integers(0, 3),
)
def test_any_request_gets_exactly_one_decision_and_changes_nothing(
    path: str,
    query: list[tuple[str, str]],
    headers: list[tuple[str, str]],
    streaming_enabled: bool,
    held: int,
    limit: int,
) -> None:
    limiter = ConnectionLimiter(max_total=max(limit, 1) * 2, max_per_user=max(limit, 1))
    for _ in range(held):
        limiter.acquire("alice")
    before = (limiter.total, dict(limiter.per_user))

    decision = admit(
        target_of(path, query), Headers(headers), streaming_enabled=streaming_enabled, limiter=limiter
    )

    assert isinstance(decision, OpenStream | ServeRest | ServePublic | Refused)
    assert (limiter.total, dict(limiter.per_user)) == before
    if isinstance(decision, Refused):
        body = msgspec.json.decode(refusal(decision).body)
        assert body["error"] == decision.code.value
        for token in TOKENS.values():
            assert token not in decision.message, "a refusal must never echo a credential"


@PROPERTY
@given(paths, queries, header_lists)
def test_a_credential_parameter_always_wins_over_every_other_answer(
    path: str, query: list[tuple[str, str]], headers: list[tuple[str, str]]
) -> None:
    query = [*query, ("Access_Token", "x")]

    assert refused(admit(target_of(path, query), Headers(headers))).code is Refusal.TOKEN_IN_URL


@PROPERTY
@given(st.integers(0, 4), st.integers(0, 4), st.integers(1, 4), st.integers(1, 4))
def test_a_stream_opens_exactly_when_the_limiter_has_a_place(
    alice_held: int, others_held: int, max_per_user: int, max_total: int
) -> None:
    limiter = ConnectionLimiter(max_total=max_total, max_per_user=max_per_user)
    for user, count in (("alice", alice_held), ("bob", others_held)):
        for _ in range(count):
            limiter.acquire(user)

    decision = admit(PORTFOLIO_PATH, bearer(), limiter=limiter)

    expected = limiter.check("alice")
    if expected is None:
        assert isinstance(decision, OpenStream)
    else:
        assert refused(decision).code is expected
