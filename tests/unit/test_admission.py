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
    SESSION_PATH,
    SNAPSHOT_PATH,
    STATS_PATH,
    TOKEN_QUERY_PARAMETERS,
    Refusal,
)
from alphaflow_server.admission import (
    ROUTES,
    OpenStream,
    Preflight,
    PublicRoute,
    Refused,
    RestRoute,
    ServePublic,
    ServeRest,
    ServeSession,
    SessionRoute,
    StreamRoute,
    bearer_or_cookie,
    canonical_origin,
    decide,
)
from alphaflow_server.auth import Principal, Role, TokenStore
from alphaflow_server.config import Origins, ServerConfig
from alphaflow_server.http_api import refusal, session_response
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
    method: str = "GET",
    allowed_origins: tuple[str, ...] = (),
    secure: bool = False,
) -> Any:
    return decide(
        target,
        headers if headers is not None else Headers(),
        NOW,
        authenticate=STORE.authenticate,
        streaming_enabled=streaming_enabled,
        capacity=limiter or ConnectionLimiter(max_total=100, max_per_user=5),
        method=method,
        allowed_origins=Origins(allowed_origins),
        secure=secure,
    )


def refused(decision: Any) -> Refused:
    assert isinstance(decision, Refused), f"expected a refusal, got {decision!r}"
    return decision


def role_of(path: str) -> Role:
    route = ROUTES[path]
    assert isinstance(route, StreamRoute | RestRoute | SessionRoute)
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
        SESSION_PATH,
    }
    assert [role_of(p) for p in (PORTFOLIO_PATH, INGEST_PATH, ADMIN_PATH)] == ["user", "service", "admin"]
    assert [role_of(p) for p in (SNAPSHOT_PATH, STATS_PATH, SESSION_PATH)] == ["user", "admin", "user"]


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
        st.tuples(st.sampled_from(["Host", "Origin", "X-Forwarded-Proto"]), header_text),
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

    assert isinstance(decision, OpenStream | ServeRest | ServeSession | Preflight | ServePublic | Refused)
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


# -------------------------------------------------------- Origin (defect 7)

OWN = "http://127.0.0.1:8765"
EVIL = "http://evil.example"
DASH = "https://dash.example.com"
CREDENTIALED_PATHS = [*STREAM_PATHS, *REST_PATHS]


def from_page(
    origin: str | None, *, host: str = "127.0.0.1:8765", role: Role = "user", **more: str
) -> Headers:
    """What a browser sends: Host, the page's Origin, and (here) the session cookie."""
    headers = Headers({"Host": host, "Cookie": f"{SESSION_COOKIE}={TOKENS[role]}", **more})
    if origin is not None:
        headers["Origin"] = origin
    return headers


def test_a_cookie_handshake_from_another_origin_is_refused_with_403_origin_not_allowed() -> None:
    decision = refused(admit(PORTFOLIO_PATH, from_page(EVIL)))

    assert (decision.status, decision.code) == (http.HTTPStatus.FORBIDDEN, Refusal.ORIGIN_NOT_ALLOWED)
    assert "--allowed-origins" in decision.message


@pytest.mark.parametrize("path", CREDENTIALED_PATHS)
def test_every_credentialed_route_refuses_another_origin(path: str) -> None:
    decision = refused(admit(path, from_page(EVIL, role=role_of(path))))

    assert decision.code is Refusal.ORIGIN_NOT_ALLOWED


@pytest.mark.parametrize(
    ("origin", "host", "secure"),
    [
        (OWN, "127.0.0.1:8765", False),
        ("HTTP://127.0.0.1:8765", "127.0.0.1:8765", False),
        ("http://localhost", "localhost:80", False),
        ("http://afl.example", "AFL.example", False),
        ("https://afl.example", "afl.example", True),
        ("https://afl.example:443", "afl.example", True),
        ("http://[::1]:8765", "[::1]:8765", False),
    ],
)
def test_the_servers_own_origin_is_accepted(origin: str, host: str, secure: bool) -> None:
    decision = admit(PORTFOLIO_PATH, from_page(origin, host=host), secure=secure)

    assert isinstance(decision, OpenStream)


@pytest.mark.parametrize(
    ("origin", "host", "secure"),
    [
        ("http://127.0.0.1:8888", "127.0.0.1:8765", False),  # another port: another origin
        ("http://localhost:8765", "127.0.0.1:8765", False),  # another host name
        ("https://127.0.0.1:8765", "127.0.0.1:8765", False),  # another scheme
        ("http://afl.example", "afl.example", True),  # plain page, TLS server
        ("http://127.0.0.1.evil.example:8765", "127.0.0.1:8765", False),
    ],
)
def test_an_origin_that_differs_in_scheme_host_or_port_is_not_the_servers_own(
    origin: str, host: str, secure: bool
) -> None:
    assert refused(admit(PORTFOLIO_PATH, from_page(origin, host=host), secure=secure)).code is (
        Refusal.ORIGIN_NOT_ALLOWED
    )


@pytest.mark.parametrize("origin", [DASH, "https://DASH.example.com", "https://dash.example.com:443"])
def test_a_listed_origin_is_accepted_in_any_spelling_of_it(origin: str) -> None:
    decision = admit(PORTFOLIO_PATH, from_page(origin), allowed_origins=(DASH,))

    assert isinstance(decision, OpenStream)


@pytest.mark.parametrize(
    "origin",
    [
        "null",
        "",
        "evil.example",
        "ftp://127.0.0.1:8765",
        "http://127.0.0.1:8765/path",
        "http://user@127.0.0.1:8765",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:8765?x",
    ],
)
def test_an_opaque_or_malformed_origin_is_refused(origin: str) -> None:
    assert refused(admit(PORTFOLIO_PATH, from_page(origin))).code is Refusal.ORIGIN_NOT_ALLOWED


def test_several_origin_headers_are_refused() -> None:
    headers = from_page(OWN)
    headers["Origin"] = OWN

    assert refused(admit(PORTFOLIO_PATH, headers)).code is Refusal.ORIGIN_NOT_ALLOWED


def test_an_origin_is_refused_when_the_request_has_several_hosts() -> None:
    headers = from_page(OWN)
    headers["Host"] = "evil.example"

    assert refused(admit(PORTFOLIO_PATH, headers)).code is Refusal.ORIGIN_NOT_ALLOWED


def test_an_origin_is_refused_when_the_request_has_no_host() -> None:
    headers = Headers({"Origin": OWN, "Cookie": f"{SESSION_COOKIE}={TOKENS['user']}"})

    assert refused(admit(PORTFOLIO_PATH, headers)).code is Refusal.ORIGIN_NOT_ALLOWED


@pytest.mark.parametrize("path", CREDENTIALED_PATHS)
def test_a_request_without_origin_is_unaffected_by_the_origin_check(path: str) -> None:
    decision = admit(path, from_page(None, role=role_of(path)))

    assert isinstance(decision, OpenStream | ServeRest)


def test_the_origin_is_checked_before_the_credentials() -> None:
    decision = refused(admit(PORTFOLIO_PATH, Headers({"Host": "127.0.0.1:8765", "Origin": EVIL})))

    assert decision.code is Refusal.ORIGIN_NOT_ALLOWED


@pytest.mark.parametrize("path", [HEALTH_PATH, METRICS_PATH])
def test_public_endpoints_skip_the_origin_check(path: str) -> None:
    assert isinstance(admit(path, from_page(EVIL)), ServePublic)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("https://Dash.Example.com", "https://dash.example.com:443"),
        ("https://dash.example.com/", "https://dash.example.com:443"),
        (" http://127.0.0.1:8765 ", "http://127.0.0.1:8765"),
        ("http://[::1]", "http://[::1]:80"),
        ("null", None),
        ("ws://127.0.0.1:8765", None),
        ("https://dash.example.com/app", None),
        ("https://", None),
    ],
)
def test_canonical_origin_spells_out_scheme_host_and_port(text: str, canonical: str | None) -> None:
    assert canonical_origin(text) == canonical


def test_allowed_origins_parse_from_a_comma_separated_flag() -> None:
    assert Origins(" https://dash.example.com, http://127.0.0.1:8888 ,") == (
        "https://dash.example.com:443",
        "http://127.0.0.1:8888",
    )
    assert ServerConfig().allowed_origins == ()


@pytest.mark.parametrize("text", ["dash.example.com", "null", "https://dash.example.com/app", "*"])
def test_allowed_origins_refuse_what_is_no_origin_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match="is not an origin"):
        Origins(f"https://ok.example,{text}")


@PROPERTY
@given(
    st.sampled_from([*ROUTES, "/elsewhere"]),
    st.sampled_from(["GET", "POST", "DELETE", "OPTIONS", "PUT", "HEAD"]),
    st.one_of(
        st.sampled_from([EVIL, "null", "http://127.0.0.1:8766", "https://127.0.0.1:8765", DASH + ".evil"]),
        header_text,
    ),
    header_lists,
)
def test_a_page_of_another_origin_is_never_served_anything_private(
    path: str, method: str, origin: str, headers: list[tuple[str, str]]
) -> None:
    request = Headers([("Host", "127.0.0.1:8765"), ("Origin", origin), *headers])
    allowed = canonical_origin(origin) in {canonical_origin(OWN), canonical_origin(DASH)}

    decision = admit(path, request, method=method, allowed_origins=(DASH,))

    if not allowed:
        assert not isinstance(decision, OpenStream | ServeRest | ServeSession | Preflight)


# ------------------------------------------------------------ CORS (defect 7)

CORS = (
    ("Access-Control-Allow-Origin", DASH),
    ("Access-Control-Allow-Credentials", "true"),
    ("Vary", "Origin"),
)


@pytest.mark.parametrize("path", REST_PATHS)
def test_rest_answers_carry_cors_headers_for_an_allowed_origin(path: str) -> None:
    decision = admit(path, from_page(DASH, role=role_of(path)), allowed_origins=(DASH,))

    assert isinstance(decision, ServeRest)
    assert decision.cors == CORS


def test_cors_headers_echo_the_origin_exactly_as_the_page_sent_it_never_a_wildcard() -> None:
    decision = admit(SNAPSHOT_PATH, from_page("https://DASH.example.com"), allowed_origins=(DASH,))

    assert isinstance(decision, ServeRest)
    assert dict(decision.cors)["Access-Control-Allow-Origin"] == "https://DASH.example.com"


def test_rest_answers_carry_no_cors_headers_without_an_origin() -> None:
    decision = admit(SNAPSHOT_PATH, bearer())

    assert isinstance(decision, ServeRest)
    assert decision.cors == ()


def test_a_refusal_on_a_rest_route_carries_cors_headers_so_the_page_can_read_it() -> None:
    decision = refused(admit(SNAPSHOT_PATH, Headers({"Origin": DASH}), allowed_origins=(DASH,)))

    assert decision.code is Refusal.MISSING_TOKEN
    assert set(CORS) <= set(decision.headers)


@pytest.mark.parametrize(
    ("path", "methods"), [(SNAPSHOT_PATH, "GET"), (STATS_PATH, "GET"), (SESSION_PATH, "POST, DELETE")]
)
def test_a_preflight_from_an_allowed_origin_is_answered_204_without_a_token(path: str, methods: str) -> None:
    headers = Headers(
        {
            "Origin": DASH,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        }
    )

    decision = admit(path, headers, method="OPTIONS", allowed_origins=(DASH,))

    assert decision == Preflight(
        (
            *CORS,
            ("Access-Control-Allow-Methods", methods),
            ("Access-Control-Allow-Headers", "Authorization"),
            ("Access-Control-Max-Age", "600"),
        )
    )


def test_a_preflight_from_another_origin_is_refused_with_403() -> None:
    decision = refused(admit(SNAPSHOT_PATH, from_page(EVIL), method="OPTIONS", allowed_origins=(DASH,)))

    assert (decision.status, decision.code) == (http.HTTPStatus.FORBIDDEN, Refusal.ORIGIN_NOT_ALLOWED)


def test_options_without_an_origin_lists_the_methods() -> None:
    assert admit(SNAPSHOT_PATH, method="OPTIONS") == Preflight((("Allow", "GET, OPTIONS"),))


def test_a_stream_handshake_is_opened_without_cors_headers_browsers_do_not_ask_for_them() -> None:
    decision = admit(PORTFOLIO_PATH, from_page(DASH), allowed_origins=(DASH,))

    assert isinstance(decision, OpenStream)


# ---------------------------------------------------------- methods (defect 13)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "HEAD"])
@pytest.mark.parametrize("path", [HEALTH_PATH, METRICS_PATH, *REST_PATHS, *STREAM_PATHS])
def test_a_method_other_than_get_is_refused_with_405_and_allow(path: str, method: str) -> None:
    route = ROUTES[path]
    headers = bearer(role_of(path)) if not isinstance(route, PublicRoute) else Headers()

    decision = refused(admit(path, headers, method=method))

    assert (decision.status, decision.code) == (
        http.HTTPStatus.METHOD_NOT_ALLOWED,
        Refusal.METHOD_NOT_ALLOWED,
    )
    assert decision.headers == (("Allow", "GET, OPTIONS" if path in REST_PATHS else "GET"),)
    assert decision.message == f"{method} is not allowed on {path}; use GET"


@pytest.mark.parametrize("path", [HEALTH_PATH, METRICS_PATH, *STREAM_PATHS])
def test_options_on_a_stream_or_public_path_is_refused_with_405(path: str) -> None:
    decision = refused(admit(path, method="OPTIONS"))

    assert decision.code is Refusal.METHOD_NOT_ALLOWED
    assert decision.headers == (("Allow", "GET"),)


@pytest.mark.parametrize("method", ["GET", "PUT", "HEAD"])
def test_the_session_route_takes_post_and_delete_only(method: str) -> None:
    decision = refused(admit(SESSION_PATH, bearer(), method=method))

    assert decision.code is Refusal.METHOD_NOT_ALLOWED
    assert decision.headers == (("Allow", "POST, DELETE, OPTIONS"),)


def test_a_method_that_is_no_plain_word_is_not_echoed() -> None:
    decision = refused(admit(HEALTH_PATH, method="X<script>"))

    assert decision.message == f"this method is not allowed on {HEALTH_PATH}; use GET"


def test_a_refused_method_is_answered_after_the_credential_in_url_and_404_checks() -> None:
    assert refused(admit(f"{HEALTH_PATH}?token=x", method="POST")).code is Refusal.TOKEN_IN_URL
    assert refused(admit("/elsewhere", method="POST")).code is Refusal.NOT_FOUND


# ------------------------------------------------------- the session endpoint


def test_posting_a_user_bearer_token_to_the_session_endpoint_sets_the_cookie() -> None:
    decision = admit(SESSION_PATH, bearer(), method="POST")

    assert decision == ServeSession(Principal("alice", "user"), TOKENS["user"])
    assert TOKENS["user"] not in repr(decision), "a decision's repr must never hold the token"


def test_the_session_endpoint_takes_the_bearer_header_not_a_cookie() -> None:
    decision = refused(admit(SESSION_PATH, from_page(None), method="POST"))

    assert decision.code is Refusal.MISSING_TOKEN


@pytest.mark.parametrize("role", ["service", "admin"])
def test_the_session_endpoint_refuses_other_roles_with_403(role: Role) -> None:
    assert refused(admit(SESSION_PATH, bearer(role), method="POST")).code is Refusal.WRONG_ROLE


def test_the_session_endpoint_refuses_another_origin() -> None:
    headers = bearer()
    headers["Origin"] = EVIL

    assert refused(admit(SESSION_PATH, headers, method="POST")).code is Refusal.ORIGIN_NOT_ALLOWED


def test_deleting_the_session_needs_no_token() -> None:
    assert admit(SESSION_PATH, method="DELETE") == ServeSession(None)


def test_the_session_cookie_is_httponly_samesite_strict_for_every_path() -> None:
    decision = admit(SESSION_PATH, bearer(), method="POST")
    assert isinstance(decision, ServeSession)

    response = session_response(decision)

    assert response.status_code == 204
    assert response.body == b""
    assert response.headers["Set-Cookie"] == (
        f"{SESSION_COOKIE}={TOKENS['user']}; HttpOnly; SameSite=Strict; Path=/"
    )


def test_the_session_cookie_is_secure_when_the_request_came_over_tls() -> None:
    decision = admit(SESSION_PATH, bearer(), method="POST", secure=True)
    assert isinstance(decision, ServeSession)

    assert session_response(decision).headers["Set-Cookie"].endswith("; Secure")


def test_the_session_cookie_is_secure_behind_a_proxy_that_terminated_tls() -> None:
    headers = bearer()
    headers["X-Forwarded-Proto"] = "https"
    decision = admit(SESSION_PATH, headers, method="POST")
    assert isinstance(decision, ServeSession)

    assert session_response(decision).headers["Set-Cookie"].endswith("; Secure")


def test_deleting_the_session_clears_the_cookie_at_once() -> None:
    decision = admit(SESSION_PATH, method="DELETE")
    assert isinstance(decision, ServeSession)

    assert session_response(decision).headers["Set-Cookie"] == (
        f"{SESSION_COOKIE}=; Max-Age=0; HttpOnly; SameSite=Strict; Path=/"
    )


def test_a_cross_origin_login_from_an_allowed_origin_carries_cors_headers() -> None:
    headers = bearer()
    headers["Origin"] = DASH

    decision = admit(SESSION_PATH, headers, method="POST", allowed_origins=(DASH,))

    assert isinstance(decision, ServeSession)
    assert set(CORS) <= set(session_response(decision).headers.raw_items())
