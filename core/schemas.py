"""Request bodies of the /v1 API, validated exactly as the anthropic SDK 2.10.0 sends them.

Unknown fields are rejected (`extra="forbid"`) so that a typo gets a clear 400 instead of being
silently ignored. Response shapes are built in `core/render.py`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_SYSTEM = 100_000
MAX_MCP_SERVERS = 20
MAX_TOOLS = 256
MAX_INITIAL_EVENTS = 50
CUSTOM_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_metadata(value: dict[str, Any] | None, *, patch: bool = False) -> None:
    if value is None:
        return
    if len(value) > MAX_METADATA_PAIRS and not patch:
        raise ValueError(f"at most {MAX_METADATA_PAIRS} metadata pairs are allowed")
    for key, item in value.items():
        if not 1 <= len(key) <= MAX_METADATA_KEY:
            raise ValueError(f"metadata keys must be 1-{MAX_METADATA_KEY} characters (got {len(key)})")
        if item is not None and len(item) > MAX_METADATA_VALUE:
            raise ValueError(f"metadata value for {key!r} exceeds {MAX_METADATA_VALUE} characters")


Metadata = dict[str, str]
MetadataPatch = dict[str, str | None]


# --- permission policies and tools -------------------------------------------------------------


class PermissionPolicy(Strict):
    type: Literal["always_allow", "always_ask", "auto"]


ToolName = Literal["bash", "edit", "read", "write", "glob", "grep", "web_fetch", "web_search"]


class AgentToolConfig(Strict):
    name: ToolName
    type: ToolName | None = None
    enabled: bool | None = None
    permission_policy: PermissionPolicy | None = None
    # web_fetch / web_search options, passed through.
    allowed_domains: list[str] | None = None
    blocked_domains: list[str] | None = None
    max_content_tokens: int | None = None
    url_sources: dict[str, Any] | None = None
    user_location: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _type_matches_name(self) -> AgentToolConfig:
        if self.type is not None and self.type != self.name:
            raise ValueError(f"config type {self.type!r} does not match name {self.name!r}")
        web_only = ("allowed_domains", "blocked_domains")
        if self.name not in ("web_fetch", "web_search"):
            for field in (*web_only, "max_content_tokens", "url_sources", "user_location"):
                if getattr(self, field) is not None:
                    raise ValueError(f"{field} applies only to web_fetch/web_search, not {self.name}")
        return self


class ToolsetDefaultConfig(Strict):
    enabled: bool | None = None
    permission_policy: PermissionPolicy | None = None


class AgentToolset(Strict):
    type: Literal["agent_toolset_20260401"]
    configs: list[AgentToolConfig] = Field(default_factory=list)
    default_config: ToolsetDefaultConfig | None = None

    @field_validator("configs")
    @classmethod
    def _unique(cls, value: list[AgentToolConfig]) -> list[AgentToolConfig]:
        names = [c.name for c in value]
        if len(names) != len(set(names)):
            raise ValueError("each tool may be configured once")
        return value


class MCPToolConfig(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    enabled: bool | None = None
    permission_policy: PermissionPolicy | None = None


class MCPToolset(Strict):
    type: Literal["mcp_toolset"]
    mcp_server_name: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    configs: list[MCPToolConfig] = Field(default_factory=list)
    default_config: ToolsetDefaultConfig | None = None


class CustomToolInputSchema(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["object"]
    properties: dict[str, Any] | None = None
    required: list[str] | None = None


class CustomTool(Strict):
    type: Literal["custom"]
    name: str
    description: Annotated[str, StringConstraints(max_length=10_000)]
    input_schema: CustomToolInputSchema

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not CUSTOM_TOOL_NAME.match(value):
            raise ValueError("custom tool names are 1-128 characters of letters, digits, '_' and '-'")
        return value


Tool = Annotated[AgentToolset | MCPToolset | CustomTool, Field(discriminator="type")]


class MCPServer(Strict):
    type: Literal["url"]
    name: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)]


class Skill(Strict):
    type: Literal["anthropic", "custom"]
    skill_id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    version: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None


class ServiceAccountIdentity(Strict):
    type: Literal["service_account"]


class AWSRoleIdentity(Strict):
    type: Literal["aws_role"]
    role_arn: Annotated[str, StringConstraints(min_length=1, max_length=2048)]


ExecutionIdentity = Annotated[ServiceAccountIdentity | AWSRoleIdentity, Field(discriminator="type")]

EffortLevel = Literal["low", "medium", "high", "xhigh", "max"]


class EffortObject(Strict):
    type: EffortLevel


class ModelConfig(Strict):
    id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    effort: EffortLevel | EffortObject | None = None
    inference_geo: str | None = None
    speed: Literal["standard", "fast"] | None = None


def _by_kind(value: Any) -> str | None:
    """Callable discriminator for "a string id or an object" fields: errors then come from the
    one branch the input chose, not from every branch of the union."""
    if isinstance(value, str):
        return "~id"
    if isinstance(value, dict):
        return "~" + str(value.get("type", "object"))
    if isinstance(value, BaseModel):
        return "~" + str(getattr(value, "type", "object"))
    return None


ModelParam = Annotated[
    Annotated[Annotated[str, StringConstraints(min_length=1, max_length=256)], Tag("~id")]
    | Annotated[ModelConfig, Tag("~object")],
    Discriminator(
        lambda v: "~id" if isinstance(v, str) else ("~object" if isinstance(v, dict | BaseModel) else None),
        custom_error_type="invalid_union",
        custom_error_message="must be a model id string or an object {id, effort?, speed?, inference_geo?}",
    ),
]


def check_tools(tools: list[Any] | None, mcp_servers: list[MCPServer] | None) -> None:
    """Cross-field rules shared by agent create/update and session overrides."""
    tools = tools or []
    servers = mcp_servers or []
    if len(servers) > MAX_MCP_SERVERS:
        raise ValueError(f"at most {MAX_MCP_SERVERS} mcp_servers are allowed")
    server_names = [s.name for s in servers]
    if len(server_names) != len(set(server_names)):
        raise ValueError("mcp_servers names must be unique")
    toolset_count = 0
    custom_names: set[str] = set()
    referenced: set[str] = set()
    for tool in tools:
        if isinstance(tool, AgentToolset):
            toolset_count += 1
        elif isinstance(tool, MCPToolset):
            if tool.mcp_server_name not in server_names:
                raise ValueError(f"mcp_toolset references unknown mcp server {tool.mcp_server_name!r}")
            referenced.add(tool.mcp_server_name)
        elif isinstance(tool, CustomTool):
            if tool.name in custom_names:
                raise ValueError(f"custom tool name {tool.name!r} is used twice")
            custom_names.add(tool.name)
    if toolset_count > 1:
        raise ValueError("at most one agent_toolset_20260401 entry is allowed")
    unreferenced = set(server_names) - referenced
    if unreferenced:
        raise ValueError(f"mcp_servers must each be referenced by an mcp_toolset: {sorted(unreferenced)}")
    if len(tools) > MAX_TOOLS:
        raise ValueError(f"at most {MAX_TOOLS} tools are allowed")


# --- agents ------------------------------------------------------------------------------------

System = Annotated[str, StringConstraints(max_length=MAX_SYSTEM)]
Description = Annotated[str, StringConstraints(max_length=2048)]


class AgentCreate(Strict):
    model: ModelParam
    name: Name
    description: Description | None = None
    execution_identity: ExecutionIdentity | None = None
    mcp_servers: list[MCPServer] = Field(default_factory=list)
    metadata: Metadata = Field(default_factory=dict)
    multiagent: dict[str, Any] | None = None
    skills: list[Skill] = Field(default_factory=list)
    system: System | None = None
    tools: list[Tool] = Field(default_factory=list)

    @model_validator(mode="after")
    def _rules(self) -> AgentCreate:
        check_metadata(self.metadata)
        check_tools(self.tools, self.mcp_servers)
        return self


class AgentUpdate(Strict):
    description: Description | None = None
    execution_identity: ExecutionIdentity | None = None
    mcp_servers: list[MCPServer] | None = None
    metadata: MetadataPatch | None = None
    model: ModelParam | None = None
    multiagent: dict[str, Any] | None = None
    name: Name | None = None
    skills: list[Skill] | None = None
    system: System | None = None
    tools: list[Tool] | None = None
    version: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None

    @model_validator(mode="after")
    def _rules(self) -> AgentUpdate:
        check_metadata(self.metadata, patch=True)
        if "name" in self.model_fields_set and self.name is None:
            raise ValueError("name cannot be cleared")
        if "model" in self.model_fields_set and self.model is None:
            raise ValueError("model cannot be cleared")
        return self


# --- environments ------------------------------------------------------------------------------


class UnrestrictedNetwork(Strict):
    type: Literal["unrestricted"]


class LimitedNetwork(Strict):
    type: Literal["limited"]
    allow_mcp_servers: bool | None = None
    allow_package_managers: bool | None = None
    allowed_hosts: list[Annotated[str, StringConstraints(min_length=1, max_length=253)]] | None = None


Networking = Annotated[UnrestrictedNetwork | LimitedNetwork, Field(discriminator="type")]
PackageList = list[Annotated[str, StringConstraints(min_length=1, max_length=256)]]


class Packages(Strict):
    type: Literal["packages"] | None = None
    apt: PackageList | None = None
    cargo: PackageList | None = None
    gem: PackageList | None = None
    go: PackageList | None = None
    npm: PackageList | None = None
    pip: PackageList | None = None


class CloudConfig(Strict):
    type: Literal["cloud"]
    networking: Networking | None = None
    packages: Packages | None = None


class SelfHostedConfig(Strict):
    type: Literal["self_hosted"]


EnvironmentConfig = Annotated[CloudConfig | SelfHostedConfig, Field(discriminator="type")]
Scope = Literal["organization", "account"]


class EnvironmentCreate(Strict):
    name: Name
    config: EnvironmentConfig | None = None
    description: Description | None = None
    metadata: Metadata = Field(default_factory=dict)
    scope: Scope | None = None

    @model_validator(mode="after")
    def _rules(self) -> EnvironmentCreate:
        check_metadata(self.metadata)
        return self


class EnvironmentUpdate(Strict):
    config: EnvironmentConfig | None = None
    description: Description | None = None
    metadata: MetadataPatch | None = None
    name: Name | None = None
    scope: Scope | None = None

    @model_validator(mode="after")
    def _rules(self) -> EnvironmentUpdate:
        check_metadata(self.metadata, patch=True)
        if "name" in self.model_fields_set and self.name is None:
            raise ValueError("name cannot be cleared")
        return self


# --- content blocks and events -----------------------------------------------------------------


class TextBlock(Strict):
    type: Literal["text"]
    text: str


class Base64Source(Strict):
    type: Literal["base64"]
    data: Annotated[str, StringConstraints(min_length=1)]
    media_type: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class URLSource(Strict):
    type: Literal["url"]
    url: Annotated[str, StringConstraints(min_length=1, max_length=8192)]


class FileSource(Strict):
    type: Literal["file"]
    file_id: Id


class PlainTextSource(Strict):
    type: Literal["text"]
    data: str
    media_type: Literal["text/plain"]


ImageSource = Annotated[Base64Source | URLSource | FileSource, Field(discriminator="type")]
DocumentSource = Annotated[Base64Source | PlainTextSource | URLSource | FileSource, Field(discriminator="type")]


class ImageBlock(Strict):
    type: Literal["image"]
    source: ImageSource


class DocumentBlock(Strict):
    type: Literal["document"]
    source: DocumentSource
    title: str | None = None
    context: str | None = None


class RedactedBlock(Strict):
    type: Literal["redacted"]


class SearchResultContent(Strict):
    type: Literal["text"]
    text: str


class SearchResultCitations(Strict):
    enabled: bool


class SearchResultBlock(Strict):
    type: Literal["search_result"]
    source: str
    title: str
    content: list[SearchResultContent]
    citations: SearchResultCitations


MessageContent = Annotated[TextBlock | ImageBlock | DocumentBlock | RedactedBlock, Field(discriminator="type")]
ToolResultContent = Annotated[TextBlock | ImageBlock | DocumentBlock | SearchResultBlock, Field(discriminator="type")]


class UserMessage(Strict):
    type: Literal["user.message"]
    content: Annotated[list[MessageContent], Field(min_length=1)]


class UserInterrupt(Strict):
    type: Literal["user.interrupt"]
    session_thread_id: str | None = None


class UserToolConfirmation(Strict):
    type: Literal["user.tool_confirmation"]
    tool_use_id: Id
    result: Literal["allow", "deny"]
    deny_message: Annotated[str, StringConstraints(max_length=10_000)] | None = None

    @model_validator(mode="after")
    def _deny_message_only_with_deny(self) -> UserToolConfirmation:
        if self.deny_message is not None and self.result != "deny":
            raise ValueError("deny_message may only be given with result 'deny'")
        return self


class UserCustomToolResult(Strict):
    type: Literal["user.custom_tool_result"]
    custom_tool_use_id: Id
    content: list[ToolResultContent] | None = None
    is_error: bool | None = None


class UserToolResult(Strict):
    type: Literal["user.tool_result"]
    tool_use_id: Id
    content: list[ToolResultContent] | None = None
    is_error: bool | None = None


class TextRubric(Strict):
    type: Literal["text"]
    content: Annotated[str, StringConstraints(min_length=1, max_length=262_144)]


class FileRubric(Strict):
    type: Literal["file"]
    file_id: Id


class UserDefineOutcome(Strict):
    type: Literal["user.define_outcome"]
    description: Annotated[str, StringConstraints(min_length=1, max_length=10_000)]
    rubric: Annotated[TextRubric | FileRubric, Field(discriminator="type")]
    max_iterations: Annotated[int, Field(ge=1, le=20)] | None = None


class SystemTextBlock(Strict):
    type: Literal["text"]
    text: str


class SystemMessage(Strict):
    type: Literal["system.message"]
    content: Annotated[list[SystemTextBlock], Field(min_length=1, max_length=1000)]


UserEvent = Annotated[
    UserMessage
    | UserInterrupt
    | UserToolConfirmation
    | UserCustomToolResult
    | UserToolResult
    | UserDefineOutcome
    | SystemMessage,
    Field(discriminator="type"),
]
InitialEvent = Annotated[UserMessage | UserDefineOutcome, Field(discriminator="type")]


class SendEvents(Strict):
    events: Annotated[list[UserEvent], Field(min_length=1, max_length=1000)]


# --- sessions ----------------------------------------------------------------------------------


class AgentRef(Strict):
    type: Literal["agent"]
    id: Id
    version: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None


class AgentWithOverrides(Strict):
    type: Literal["agent_with_overrides"]
    id: Id
    version: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    model: ModelParam | None = None
    system: System | None = None
    tools: list[Tool] | None = None
    mcp_servers: list[MCPServer] | None = None
    skills: list[Skill] | None = None


class BranchCheckout(Strict):
    type: Literal["branch"]
    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class CommitCheckout(Strict):
    type: Literal["commit"]
    sha: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{7,64}$")]


MountPath = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^/")]


class GitHubRepositoryResource(Strict):
    type: Literal["github_repository"]
    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    authorization_token: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None
    checkout: Annotated[BranchCheckout | CommitCheckout, Field(discriminator="type")] | None = None
    mount_path: MountPath | None = None


class FileResource(Strict):
    type: Literal["file"]
    file_id: Id
    mount_path: MountPath | None = None


class MemoryStoreResource(Strict):
    type: Literal["memory_store"]
    memory_store_id: Id
    access: Literal["read_write", "read_only"] | None = None
    instructions: str | None = None


Resource = Annotated[GitHubRepositoryResource | FileResource | MemoryStoreResource, Field(discriminator="type")]


class MonetaryAmount(Strict):
    amount: Annotated[str, StringConstraints(pattern=r"^(0|[1-9][0-9]{0,17})$")]
    currency: Literal["USD"]


class BudgetLimit(Strict):
    type: Literal["limit"]
    max_list_cost: MonetaryAmount


class SessionCreate(Strict):
    agent: Annotated[
        Annotated[Id, Tag("~id")]
        | Annotated[AgentRef, Tag("~agent")]
        | Annotated[AgentWithOverrides, Tag("~agent_with_overrides")],
        Discriminator(
            _by_kind,
            custom_error_type="invalid_union",
            custom_error_message="must be an agent id string or an object "
            "{type: 'agent' | 'agent_with_overrides', id, version?}",
        ),
    ]
    environment_id: Id
    budget: BudgetLimit | None = None
    initial_events: Annotated[list[InitialEvent], Field(max_length=MAX_INITIAL_EVENTS)] = Field(default_factory=list)
    metadata: Metadata = Field(default_factory=dict)
    resources: list[Resource] = Field(default_factory=list)
    title: Annotated[str, StringConstraints(max_length=1024)] | None = None
    vault_ids: list[Id] = Field(default_factory=list)

    @model_validator(mode="after")
    def _rules(self) -> SessionCreate:
        check_metadata(self.metadata)
        if isinstance(self.agent, AgentWithOverrides) and (
            self.agent.tools is not None or self.agent.mcp_servers is not None
        ):
            check_tools(self.agent.tools, self.agent.mcp_servers)
        return self


class SessionAgentUpdate(Strict):
    tools: list[Tool] | None = None
    mcp_servers: list[MCPServer] | None = None


class SessionUpdate(Strict):
    agent: SessionAgentUpdate | None = None
    budget: BudgetLimit | None = None
    metadata: MetadataPatch | None = None
    title: Annotated[str, StringConstraints(max_length=1024)] | None = None
    vault_ids: list[str] | None = None

    @model_validator(mode="after")
    def _rules(self) -> SessionUpdate:
        check_metadata(self.metadata, patch=True)
        return self
