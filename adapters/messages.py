"""Every user-facing string the workspace adapters show, in one place (Slack mrkdwn)."""

from __future__ import annotations

# Progress, as the assistant status line shows it after the bot's name.
STATUS_THINKING = "is thinking…"
STATUS_RUNNING_TOOL = "is running {tool}…"
STATUS_RETRYING = "is retrying after an error…"
STATUS_WAITING = "is waiting for your approval…"
LOADING_MESSAGES = ["Thinking…", "Working on it…"]

# Tool calls, as task titles in the streamed reply and as lines in the fallback message.
TASK_TITLE = "{tool}: {summary}"
TASK_ICON = {"pending": "◻️", "in_progress": "⏳", "complete": "✅", "error": "❌"}

# Human in the loop.
APPROVAL_PROMPT = "*The agent wants to run `{tool}`*"
APPROVAL_APPROVE = "Approve"
APPROVAL_DENY = "Deny"
APPROVAL_APPROVED = "✅ Approved: `{tool}`"
APPROVAL_DENIED = "🚫 Denied: `{tool}`"
DENIED_BY = "Denied in Slack by <@{user}>."
CUSTOM_TOOL_WAITING = "The agent is waiting for the result of `{tool}` from the API client."
STOP_BUTTON = "Stop"
STOPPED = "_Stopped._"
# A message that is only one of these words stops the agent instead of talking to it.
STOP_WORDS = frozenset({"stop", "cancel", "abort"})

# Context given to the agent on the first mention inside an existing thread.
HISTORY_HEADER = "Earlier messages in this Slack thread, oldest first:"
HISTORY_LINE = "[{author}] {text}"
FROM_USER = "<@{user}>: {text}"

# Errors reach the thread as one short line, never silence.
ERROR = "⚠️ {message}"
ERROR_BY_TYPE = {
    "model_overloaded_error": "The model is overloaded right now. Try again in a minute.",
    "model_rate_limited_error": "The model's rate limit was hit. Try again in a minute.",
    "model_request_failed_error": "The model request failed: {message}",
    "billing_error": "The model provider refused the request for billing reasons.",
    "authentication_error": "The model provider rejected the API key configured for this agent.",
}
ERROR_GENERIC = "Something went wrong: {message}"
RETRIES_EXHAUSTED = "The model kept failing, so I stopped. Mention me again to retry."
NOT_CONFIGURED = (
    "No agent answers in this workspace yet. An admin sets `OMA_SLACK_AGENT` (and `OMA_SLACK_ENVIRONMENT`) "
    "on the server."
)
TERMINATED = "This session has ended. Mention me again to start a new one."
CONTINUED = "_(continued)_"

# Lark/Feishu (card markdown). The turn's card: steps as lines, then the answer.
LARK_THINKING = "_Thinking…_"
LARK_NO_ANSWER = "_(no answer)_"
LARK_CLIPPED = "_(earlier text clipped)_\n\n…"
LARK_STEP = "`{tool}` {detail}"
LARK_STEP_BARE = "`{tool}`"
LARK_APPROVAL_ELSEWHERE = (
    "The agent waits for approval to run `{tool}`: allow or deny it through the API (a `user.tool_confirmation` event)."
)
LARK_FROM_USER = "<at id={user}></at>: {text}"
LARK_HISTORY_HEADER = "Earlier messages in this Lark thread, oldest first:"
LARK_NOT_CONFIGURED = (
    "No agent answers in this workspace yet. An admin sets `OMA_LARK_AGENT` (and `OMA_LARK_ENVIRONMENT`) on the server."
)
GH_PULL_FAILED = "I pushed my commits to `{branch}` but could not open a pull request: {detail}"
