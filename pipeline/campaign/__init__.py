"""The campaign as library functions: `prepare_campaign` (read, validate, build payloads), `validate_campaign` and
`run_campaign` (send, then write the results file). They wire the stages together and return data; they never
print. The CLI decides what to show and which exit code to use.

    prepare.py      reading, checking and building payloads, batch by batch
    validation.py   validate_campaign and its report
    options.py      what a caller chooses for a run, and where progress goes
    sending.py      the sending pass: rows to send, the sender, the state's commits, signals, progress
    outcomes.py     each row's outcome, which rows a run or a retry sends, the results pass
    run.py          run_campaign, shards, the run summary
"""

from pipeline.campaign.options import ProgressSink, RetrySelection, RunOptions, RunStart
from pipeline.campaign.prepare import PreparedBatch, PreparedCampaign, prepare_campaign, prepared_batches
from pipeline.campaign.run import RunSummary, check_shard_layout, run_campaign, shard_spec, state_path
from pipeline.campaign.validation import ReasonCount, ValidationReport, validate_campaign

__all__ = [
    "PreparedBatch",
    "PreparedCampaign",
    "ProgressSink",
    "ReasonCount",
    "RetrySelection",
    "RunOptions",
    "RunStart",
    "RunSummary",
    "ValidationReport",
    "check_shard_layout",
    "prepare_campaign",
    "prepared_batches",
    "run_campaign",
    "shard_spec",
    "state_path",
    "validate_campaign",
]
