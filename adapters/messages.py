"""Every user-facing string the workspace adapters show, in one place (Slack mrkdwn; Linear Markdown)."""

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

# --- Linear (agent activities and the OAuth install pages; Markdown) ---------------------------

LINEAR_ACK = "Looking into it."
LINEAR_RETRYING = "Retrying after an error…"
LINEAR_TOOL_DONE = "(no output)"
LINEAR_TOOL_FAILED = "(failed, no output)"
LINEAR_DONE = "Done."
LINEAR_STOPPED = "Stopped."
LINEAR_REFUSED = "The model declined to answer this request."
LINEAR_TERMINATED = "This session has ended. Mention me or delegate the issue again to start a new one."
RETRIES_EXHAUSTED_LINEAR = "The model kept failing, so I stopped. Send a follow-up to try again."
LINEAR_APPROVAL = (
    "I need your approval to run:\n\n{calls}\n\nReply **{approve}** to allow it, or tell me what to do instead."
)
LINEAR_APPROVAL_LINE = "- `{tool}`: `{parameter}`"
LINEAR_APPROVE = "Approve"
LINEAR_DENY = "Deny"
# A prompt answering an approval request that is one of these (case-insensitive) allows the call;
# anything else denies it, and the prompt's words reach the agent as the reason.
LINEAR_APPROVE_WORDS = frozenset(
    {"approve", "approved", "yes", "y", "ok", "okay", "allow", "go ahead", "do it", "sure"}
)
LINEAR_DENIED_BY = "Denied in Linear by {user}: {text}"
LINEAR_CUSTOM_TOOL_WAITING = "Waiting for a tool result from the API client."
LINEAR_SESSION_LINK = "Agent session"
LINEAR_UNAUTHORIZED = "Linear refused the workspace's token; install the app again."
LINEAR_NOT_CONFIGURED = (
    "No agent answers in this Linear workspace yet. An admin sets `OMA_LINEAR_AGENT` (and "
    "`OMA_LINEAR_ENVIRONMENT`) on the server."
)

# What the agent is given on `created`, besides Linear's own prompt context.
LINEAR_PREVIOUS_COMMENTS = "Earlier comments in this Linear thread, oldest first:"
LINEAR_GUIDANCE = "Guidance for agents in this Linear workspace:"
LINEAR_COMMENT_LINE = "[{author}] {text}"
LINEAR_GUIDANCE_LINE = "- ({origin}) {text}"
LINEAR_ISSUE = "Linear issue {identifier}: {title}\n\n{description}"
LINEAR_FROM_USER = "{user}: {text}"

# The OAuth install, as plain-text pages in the installer's browser.
LINEAR_INSTALLED = "Installed in the Linear workspace {name}. Delegate an issue to the agent or mention it."
LINEAR_INSTALL_FAILED = "The Linear install did not complete: {reason}. Start again from /linear/install."
LINEAR_INSTALL_NO_AGENT = "Set OMA_LINEAR_AGENT on the server first: it names the agent that answers in Linear."

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

# --- GitHub (Markdown) --------------------------------------------------------------------------

# What the agent is told, per trigger. {kind}: "issue" or "pull request".
GH_KIND_ISSUE = "issue"
GH_KIND_PULL = "pull request"
GH_ASSIGNED = "@{sender} assigned you {kind} #{number} in {repo}: {title}\n\n{body}"
GH_LABELED = "@{sender} added the label `{label}` to {kind} #{number} in {repo}: {title}\n\n{body}"
GH_OPENED = "@{sender} opened {kind} #{number} in {repo}, mentioning you: {title}\n\n{body}"
GH_COMMENT = "@{sender} on {kind} #{number} in {repo} ({title}): {text}"
GH_REVIEW_COMMENT = (
    "@{sender} commented on `{path}` in pull request #{number} in {repo} ({title}):\n```diff\n{hunk}\n```\n{text}"
)
# Context on the first trigger of a conversation.
GH_CHECKOUT = (
    "The repository {repo} is cloned into `{directory}/` in your working directory ({mount_path}), at {checkout}. "
    "To change code, edit it there and commit with git; you cannot push. When you finish, {after}"
)
GH_CHECKOUT_BRANCH = "branch `{branch}`"
GH_CHECKOUT_COMMIT = "commit `{sha}`"
GH_AFTER_ISSUE = "your commits are pushed to a new branch and proposed as a draft pull request for this issue."
GH_AFTER_PULL = "your commits are pushed to this pull request's branch."
GH_HISTORY_HEADER = "Earlier comments on this {kind}, oldest first:"
GH_HISTORY_LINE = "[@{author}] {text}"

# The progress comment: a status line over a checklist of what the agent did.
GH_PROGRESS_WORKING = "⏳ **Working on it…**"
GH_PROGRESS_DONE = "✅ **Done**"
GH_PROGRESS_STOPPED = "⏹️ **Stopped**"
GH_PROGRESS_FAILED = "⚠️ **Stopped by an error**"
GH_PROGRESS_WAITING = "⏸️ **Waiting for approval**"
GH_TASK = "- [{mark}] {icon}`{tool}` {summary}"
GH_TASK_FAILED_ICON = "❌ "
GH_TASKS_HIDDEN = "- … {count} earlier steps"

# The final comment.
GH_NO_ANSWER = "Done."
GH_PULL_OPENED = "I opened the draft pull request #{number} with my changes."
GH_PULL_UPDATED = "I pushed my new commits to #{number}."
GH_PUSHED = "I pushed {count} commit(s) to `{branch}`."
GH_PUSH_FAILED = "I committed changes but could not push them: {detail}"
GH_PULL_FAILED = "I pushed my commits to `{branch}` but could not open a pull request: {detail}"
GH_APPROVAL_UNSUPPORTED = (
    "I am waiting for approval to run {tools}, which cannot be given on GitHub: approve it through the API, "
    "or let this agent's tools run without asking."
)
GH_PULL_TITLE = "{title}"
GH_PULL_BODY = "Closes #{number}.\n\nThe agent @{bot} made these changes, asked by @{requester}."
GH_NOT_CONFIGURED = (
    "No agent answers on this repository yet. An admin sets `OMA_GITHUB_AGENT` (and `OMA_GITHUB_ENVIRONMENT`) "
    "on the server."
)
