"""The status document and the job URLs: the shapes every profile hands out."""

from __future__ import annotations

from nearline.jobs import JobRecord, JobStatus, iso, job_urls, poll_headers, status_document


def test_status_document_has_the_durable_fields_and_iso_utc_times() -> None:
    job = JobRecord(
        "j1", "digits", {"pixels": []}, JobStatus.COMPLETED, {"label": 1}, created=0.0, updated=1.5
    )
    doc = status_document(job)
    assert doc == {
        "instanceId": "j1",
        "name": "digits",
        "runtimeStatus": "Completed",
        "input": {"pixels": []},
        "output": {"label": 1},
        "customStatus": None,
        "createdTime": "1970-01-01T00:00:00.000000Z",
        "lastUpdatedTime": "1970-01-01T00:00:01.500000Z",
    }
    assert iso(None) is None


def test_terminal_states() -> None:
    assert {s for s in JobStatus if s.terminal} == {
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.TERMINATED,
    }


def test_job_urls_are_absolute_and_carry_a_query_key() -> None:
    plain = job_urls("https://api.example.com/", "abc")
    assert plain == {
        "id": "abc",
        "statusQueryGetUri": "https://api.example.com/api/jobs/abc",
        "terminatePostUri": "https://api.example.com/api/jobs/abc/terminate?reason={text}",
        "purgeHistoryDeleteUri": "https://api.example.com/api/jobs/abc",
    }
    keyed = job_urls("https://api.example.com", "abc", code="k/1+")
    assert keyed["statusQueryGetUri"] == "https://api.example.com/api/jobs/abc?code=k%2F1%2B"
    assert keyed["terminatePostUri"].endswith("/terminate?reason={text}&code=k%2F1%2B")
    assert poll_headers(keyed, 1) == {"Location": keyed["statusQueryGetUri"], "Retry-After": "1"}
