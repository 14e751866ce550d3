"""Launch paths → repository keys, for every BinderHub provider (binderhub-protocol.md §1.4)."""

from __future__ import annotations

import pytest

from federation.errors import LaunchPathError
from federation.launch import PROVIDERS, parse_launch

# (provider, [launch paths of ONE repository: refs, case, .git, slashes], expected key)
SAME_REPO = [
    ("gh", ["/build/gh/binder-examples/requirements/HEAD",
            "/build/gh/Binder-Examples/Requirements/main",
            "/build/gh/binder-examples/requirements.git/HEAD",
            "/build/gh/binder-examples/requirements/HEAD/",
            "/build/gh/binder-examples/requirements/hotfix/squash-bug",
            "/build/gh/binder-examples/requirements/1479e0252b2e648bb755ee913292b79495931717",
            "/v2/gh/binder-examples/requirements/HEAD?urlpath=lab",
            "/build/gh/binder-examples/requirements/HEAD?build_token=abc.def"],
     "/build/gh/binder-examples/requirements"),
    ("gist", ["/build/gist/mariusvniekerk/8a658f7f63b13768d1e75fa2464f5092/HEAD",
              "/build/gist/mariusvniekerk/8a658f7f63b13768d1e75fa2464f5092",
              "/build/gist/MariusVNiekerk/8A658F7F63B13768D1E75FA2464F5092/abc123"],
     "/build/gist/8a658f7f63b13768d1e75fa2464f5092"),
    ("gl", ["/build/gl/mosaik%2Fexamples%2Fmosaik-tutorials-on-binder/HEAD",
            "/build/gl/mosaik%2Fexamples%2Fmosaik-tutorials-on-binder/feature%2Fx",
            "/build/gl/mosaik%2Fexamples%2Fmosaik-tutorials-on-binder/feature/x",
            "/build/gl/Mosaik%2FExamples%2FMosaik-Tutorials-On-Binder/main/"],
     "/build/gl/mosaik/examples/mosaik-tutorials-on-binder"),
    ("git", ["/build/git/https%3A%2F%2Fgithub.com%2Fbinder-examples%2Fconda/main",
             "/build/git/https%3A%2F%2Fgithub.com%2Fbinder-examples%2Fconda.git/HEAD",
             "/build/git/https%3A%2F%2Fgithub.com%2Fbinder-examples%2Fconda%2F/"
             "1479e0252b2e648bb755ee913292b79495931717"],
     "/build/git/https://github.com/binder-examples/conda"),
    ("git", ["/build/git/git%40github.com%3Abinder-examples%2Fconda.git/main",
             "/build/git/ssh%3A%2F%2Fgit%40github.com%2Fbinder-examples%2Fconda/HEAD"],
     "/build/git/ssh://git@github.com/binder-examples/conda"),
    ("zenodo", ["/build/zenodo/10.5281/zenodo.3242074/", "/build/zenodo/10.5281/ZENODO.3242074"],
     "/build/zenodo/10.5281/zenodo.3242074"),
    ("figshare", ["/build/figshare/10.6084/m9.figshare.9782777.v1/",
                  "/build/figshare/10.6084/m9.figshare.9782777.v2",
                  "/build/figshare/10.6084/m9.figshare.9782777"],
     "/build/figshare/10.6084/m9.figshare.9782777"),
    ("dataverse", ["/build/dataverse/10.7910/DVN/TJCLKP/", "/build/dataverse/10.7910/dvn/tjclkp"],
     "/build/dataverse/10.7910/dvn/tjclkp"),
    ("hydroshare", ["/build/hydroshare/8f7c2f0341ef4180b0dbe97f59130756/",
                    "/build/hydroshare/https%3A%2F%2Fwww.hydroshare.org%2Fresource%2F"
                    "8f7c2f0341ef4180b0dbe97f59130756%2F/",
                    "/build/hydroshare/10.4211%2Fhs.8f7c2f0341ef4180b0dbe97f59130756"],
     "/build/hydroshare/8f7c2f0341ef4180b0dbe97f59130756"),
    ("ckan", ["/build/ckan/https%3A%2F%2Fdemo.ckan.org%2Fdataset%2Fmy-sample-dataset-001/",
              "/build/ckan/https%3A%2F%2Fdemo.ckan.org%2Fdataset%2Fmy-sample-dataset-001"
              "%2Fhistory%2F7c8ad1f1/",
              "/build/ckan/https%3A%2F%2Fdemo.ckan.org%2Fdataset%2Fmy-sample-dataset-001"
              "%3Factivity_id%3D7c8ad1f1"],
     "/build/ckan/https://demo.ckan.org/dataset/my-sample-dataset-001"),
]


@pytest.mark.parametrize(("provider", "paths", "key"), SAME_REPO,
                         ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(SAME_REPO)])
def test_every_ref_of_a_repository_gets_one_key(provider: str, paths: list[str],
                                                key: str) -> None:
    """All refs (and the case, .git and slash variants BinderHub accepts) share one key."""
    for path in paths:
        launch = parse_launch(path)
        assert launch.provider == provider
        assert launch.key == key, path


def test_every_registered_provider_is_covered() -> None:
    """The table above covers each of BinderHub's nine default providers."""
    assert {p for p, _, _ in SAME_REPO} == set(PROVIDERS)


def test_different_repositories_get_different_keys() -> None:
    """Keys separate repositories, including ones that share a prefix."""
    keys = {parse_launch(p).key for p in [
        "/build/gh/org/repo/HEAD", "/build/gh/org/repo-two/HEAD", "/build/gh/org2/repo/HEAD",
        "/build/gl/group%2Frepo/HEAD", "/build/gl/group%2Frepo2/HEAD",
        "/build/figshare/10.6084/m9.figshare.9782777", "/build/figshare/10.6084/m9.figshare.97827",
    ]}
    assert len(keys) == 7


def test_gh_key_is_todays_redirector_string() -> None:
    """For gh the hashed key is exactly /build/gh/<owner>/<repo>, lower case (compatibility)."""
    assert parse_launch("/v2/gh/Jupyter/Notebook/HEAD").key == "/build/gh/jupyter/notebook"


@pytest.mark.parametrize(
    ("path", "cookie_path"),
    [
        ("/build/gh/Org/Repo/feature/x?build_token=t", "/build/gh/Org/Repo"),
        ("/build/gl/group%2Fproj/main", "/build/gl/group%2Fproj"),
        ("/build/gist/u/abc/rev", "/build/gist/u/abc"),
        ("/build/zenodo/10.5281/zenodo.3242074/", "/build/zenodo/10.5281/zenodo.3242074"),
        ("/build/figshare/10.6084/m9.figshare.9782777.v1",
         "/build/figshare/10.6084/m9.figshare.9782777.v1"),
    ],
)
def test_cookie_path_covers_every_ref_but_no_other_repository(path: str,
                                                              cookie_path: str) -> None:
    """The sticky cookie's Path is the raw repository prefix; DOIs keep their whole path."""
    assert parse_launch(path).cookie_path == cookie_path


def test_unknown_provider_routes_by_path_without_last_segment() -> None:
    """Providers BinderHub may add later still route, keyed without their last segment."""
    launch = parse_launch("/build/newhost/Org/Repo/v1.0")
    assert (launch.provider, launch.key) == ("newhost", "/build/newhost/org/repo")


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/build/gh/org/repo", 400, "did you mean /build/gh/org/repo/HEAD"),
        ("/build/gh/org/", 400, "expected <owner>/<repo>/<ref>"),
        ("/build/gh/", 400, "missing repository"),
        ("/build/", 400, "invalid repository provider"),
        ("/build/g%20h/a/b", 400, "invalid repository provider"),
        ("/build/git/https%3A//github.com/a/b/main", 400, "fully URL-encoded"),
        ("/build/git/file%3A%2F%2F%2Fetc%2Fpasswd/main", 400, "fully URL-encoded"),
        ("/build/zenodo/not-a-doi", 400, "expected a DOI"),
        ("/build/hydroshare/nothing-here", 400, "32-character hex id"),
        ("/build/ckan/ftp%3A%2F%2Fx/", 400, "http(s) dataset URL"),
        ("/build/gh/a/b/c\x00", 400, "control characters"),
        ("/build/gh/a/b/" + "x" * 5000, 414, "longer than"),
        ("/notbuild/gh/a/b/c", 404, "not a launch path"),
    ],
)
def test_bad_paths_get_a_reason(path: str, status: int, words: str) -> None:
    """Unroutable paths raise LaunchPathError with a status and a reason a user can act on."""
    with pytest.raises(LaunchPathError) as info:
        parse_launch(path)
    assert info.value.status == status
    assert words in info.value.reason


def test_query_is_not_part_of_the_key() -> None:
    """build_token and other query parameters never change the key."""
    a = parse_launch("/build/gh/o/r/HEAD?build_token=1")
    b = parse_launch("/build/gh/o/r/HEAD?build_token=2&x=%2F")
    assert a == b
