"""The router over real sockets: redirects, cookies, CORS, the UI proxy, bad paths."""

from __future__ import annotations

from collections import Counter

from tests.conftest import StartFederation


async def test_launch_redirects_with_exact_raw_path_and_query(
    start_federation: StartFederation,
) -> None:
    """A 307 carries the member URL plus the raw path and query, byte for byte."""
    fed = await start_federation()
    path = "/build/gl/group%2Fsub%2Fproj/main?build_token=a.b%2Fc&x=%20"
    response = await fed.launch(path)
    assert response.status == 307
    location = response.headers["Location"]
    member = fed.member_by_url(location)
    assert location == fed.members[member].url + path
