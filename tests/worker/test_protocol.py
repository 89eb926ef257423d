"""What a job message shows of its job: a summary, never its code, files or env values."""

from __future__ import annotations

from worker.models import Job
from worker.protocol import RUN_JOB, Publication, job_reprs, job_summary

SECRET = "s3cr3t-value"


def payload() -> dict[str, object]:
    job = Job(id="job-1", code=f"print('{SECRET}')", interpreter="python3",
              env={"TOKEN": SECRET}, files={"data.txt": {"content": SECRET * 2}},
              args=[SECRET])
    return job.model_dump(mode="json", exclude_defaults=True)


def test_a_summary_names_the_job_and_sizes_what_it_runs() -> None:
    summary = job_summary(payload())
    code = f"print('{SECRET}')"
    assert summary == (f"Job(id='job-1', interpreter='python3', code=<{len(code)} bytes>, "
                       f"files=<1, {2 * len(SECRET)} bytes>, env=<1 vars>)")
    assert SECRET not in summary


def test_a_summary_of_something_that_is_no_job_says_only_its_type() -> None:
    assert job_summary(["not", "a", "job"]) == "<list>"
    assert job_summary({"id": "x" * 500}) == f"Job(id='{'x' * 64}')"  # bounded


def test_a_job_publication_carries_summaries_and_other_tasks_keep_celerys() -> None:
    job = Publication(task=RUN_JOB, task_id="job-1", queue="sandrun", args=[payload()])
    options = job.options()
    assert options["argsrepr"] == job_summary(payload()) and options["kwargsrepr"] == "{}"
    assert SECRET not in repr(options)  # the job itself travels in args, not options
    other = Publication(task="tests.add", task_id="t", queue="sandrun", args=[1, 2])
    assert "argsrepr" not in other.options()


def test_a_job_passed_by_keyword_is_summarised_too() -> None:
    reprs = job_reprs([], {"job": payload(), "extra": SECRET})
    assert reprs == {"argsrepr": "()",
                     "kwargsrepr": f"{{'job': {job_summary(payload())}, 'extra': ...}}"}
