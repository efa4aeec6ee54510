"""Agents and environments driven by the official anthropic SDK, every response checked strictly."""

from __future__ import annotations

import anthropic
import pytest
from anthropic.pagination import SyncPageCursor
from anthropic.types.beta import BetaEnvironment, BetaEnvironmentDeleteResponse
from anthropic.types.beta.beta_managed_agents_agent import BetaManagedAgentsAgent

from tests.strict import check

TOOLS = [
    {
        "type": "agent_toolset_20260401",
        "default_config": {"permission_policy": {"type": "always_ask"}},
        "configs": [
            {"name": "bash", "enabled": True, "permission_policy": {"type": "always_allow"}},
            {"name": "web_fetch"},
        ],
    },
    {
        "type": "custom",
        "name": "lookup_order",
        "description": "Look up an order",
        "input_schema": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
    },
    {"type": "mcp_toolset", "mcp_server_name": "docs"},
]


def create_agent(client: anthropic.Anthropic, **overrides: object) -> BetaManagedAgentsAgent:
    params: dict[str, object] = {
        "model": "claude-sonnet-5",
        "name": "helper",
        "system": "You help.",
        "tools": TOOLS,
        "mcp_servers": [{"type": "url", "name": "docs", "url": "https://mcp.example.com/sse"}],
        "metadata": {"team": "core"},
    }
    params.update(overrides)
    raw = client.beta.agents.with_raw_response.create(**params)  # type: ignore[arg-type]
    assert raw.http_response.headers["request-id"].startswith("req_")
    check(BetaManagedAgentsAgent, raw.http_response.json())
    return raw.parse()


def test_agent_create_resolves_defaults(client: anthropic.Anthropic) -> None:
    agent = create_agent(client)
    assert agent.id.startswith("agent_")
    assert agent.version == 1
    assert agent.model.id == "claude-sonnet-5"
    assert agent.execution_identity.type == "service_account"
    toolset = agent.tools[0]
    assert toolset.type == "agent_toolset_20260401"
    assert toolset.default_config.enabled is True
    assert toolset.default_config.permission_policy.type == "always_ask"
    bash, web_fetch = toolset.configs
    assert (bash.name, bash.permission_policy.type) == ("bash", "always_allow")
    # Unset fields inherit the toolset's default config.
    assert (web_fetch.name, web_fetch.enabled, web_fetch.permission_policy.type) == ("web_fetch", True, "always_ask")
    mcp = agent.tools[2]
    assert mcp.type == "mcp_toolset" and mcp.default_config.permission_policy.type == "always_allow"
    assert agent.metadata == {"team": "core"}
    assert agent.archived_at is None


def test_agent_model_config_object_and_effort_string(client: anthropic.Anthropic) -> None:
    agent = create_agent(
        client, model={"id": "claude-opus-4-1", "effort": "high", "speed": "standard"}, tools=[], mcp_servers=[]
    )
    assert agent.model.id == "claude-opus-4-1"
    assert agent.model.effort is not None and agent.model.effort.type == "high"
    assert agent.model.speed == "standard"


def test_agent_update_versions_and_conflict(client: anthropic.Anthropic) -> None:
    agent = create_agent(client)
    raw = client.beta.agents.with_raw_response.update(
        agent.id, version=1, system="Be brief.", metadata={"team": None, "tier": "gold"}
    )
    updated = check(BetaManagedAgentsAgent, raw.http_response.json())
    assert updated.version == 2
    assert updated.system == "Be brief."
    assert updated.metadata == {"tier": "gold"}
    assert updated.name == "helper"  # omitted fields are preserved
    assert len(updated.tools) == 3

    # A stale version is a 409 the SDK must not retry (x-should-retry: false).
    with pytest.raises(anthropic.ConflictError) as exc_info:
        client.beta.agents.update(agent.id, version=1, system="stale")
    err = exc_info.value
    assert err.response.headers["x-should-retry"] == "false"
    assert err.error_code == "agent_version_conflict"
    assert err.request_id and err.request_id.startswith("req_")
    body = err.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == "invalid_request_error"

    # Every version is kept: retrieve by version, list versions newest first.
    v1 = client.beta.agents.retrieve(agent.id, version=1)
    assert v1.system == "You help." and v1.version == 1
    latest = client.beta.agents.retrieve(agent.id)
    assert latest.version == 2
    raw_versions = client.beta.agents.versions.with_raw_response.list(agent.id)
    page = check(SyncPageCursor[BetaManagedAgentsAgent], raw_versions.http_response.json())
    assert [a.version for a in page.data] == [2, 1]


def test_agent_update_clearing_tools_and_no_op(client: anthropic.Anthropic) -> None:
    agent = create_agent(client)
    same = client.beta.agents.update(agent.id, name="helper")
    assert same.version == 1  # nothing changed: no new version
    cleared = client.beta.agents.update(agent.id, tools=[], mcp_servers=[])
    assert cleared.tools == [] and cleared.mcp_servers == [] and cleared.version == 2


def test_agent_list_paginates_and_filters(client: anthropic.Anthropic) -> None:
    ids = [create_agent(client, name=f"a{i}", tools=[], mcp_servers=[]).id for i in range(5)]
    raw = client.beta.agents.with_raw_response.list(limit=2)
    first = check(SyncPageCursor[BetaManagedAgentsAgent], raw.http_response.json())
    assert len(first.data) == 2 and first.next_page
    seen = [a.id for a in client.beta.agents.list(limit=2)]
    assert seen == list(reversed(ids))  # newest first, across pages, no duplicates
    archived = client.beta.agents.archive(ids[0])
    assert archived.archived_at is not None
    assert ids[0] not in [a.id for a in client.beta.agents.list()]
    assert ids[0] in [a.id for a in client.beta.agents.list(include_archived=True)]
    after = client.beta.agents.retrieve(ids[2]).created_at
    recent = [a.id for a in client.beta.agents.list(created_at_gte=after)]
    assert recent == [ids[4], ids[3], ids[2]]


def test_archived_agent_is_read_only(client: anthropic.Anthropic) -> None:
    agent = create_agent(client)
    raw = client.beta.agents.with_raw_response.archive(agent.id)
    archived = check(BetaManagedAgentsAgent, raw.http_response.json())
    assert archived.archived_at is not None
    with pytest.raises(anthropic.BadRequestError) as exc_info:
        client.beta.agents.update(agent.id, system="nope")
    assert exc_info.value.error_code == "agent_archived"


def test_environment_lifecycle(client: anthropic.Anthropic) -> None:
    raw = client.beta.environments.with_raw_response.create(
        name="py",
        config={
            "type": "cloud",
            "networking": {"type": "limited", "allowed_hosts": ["pypi.org"], "allow_package_managers": True},
            "packages": {"pip": ["requests"]},
        },
        metadata={"k": "v"},
    )
    env = check(BetaEnvironment, raw.http_response.json())
    assert env.id.startswith("env_")
    assert env.config.type == "cloud"
    assert env.config.networking.type == "limited"
    assert env.config.networking.allowed_hosts == ["pypi.org"]
    assert env.config.packages.pip == ["requests"] and env.config.packages.apt == []

    raw = client.beta.environments.with_raw_response.update(env.id, description="Python box", metadata={"k": None})
    updated = check(BetaEnvironment, raw.http_response.json())
    assert updated.description == "Python box" and updated.metadata == {}
    assert updated.config.packages.pip == ["requests"]  # config untouched when omitted

    default = client.beta.environments.create(name="plain")
    assert default.config.type == "cloud" and default.config.networking.type == "unrestricted"

    page = check(
        SyncPageCursor[BetaEnvironment], client.beta.environments.with_raw_response.list().http_response.json()
    )
    assert {e.id for e in page.data} == {env.id, default.id}

    archived = client.beta.environments.archive(env.id)
    assert archived.archived_at is not None
    with pytest.raises(anthropic.BadRequestError) as exc_info:
        client.beta.environments.update(env.id, name="x")
    assert exc_info.value.error_code == "environment_archived"

    raw_del = client.beta.environments.with_raw_response.delete(default.id)
    deleted = check(BetaEnvironmentDeleteResponse, raw_del.http_response.json())
    assert deleted.id == default.id and deleted.type == "environment_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.beta.environments.retrieve(default.id)


def test_limited_network_packages_need_package_managers(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as exc_info:
        client.beta.environments.create(
            name="x", config={"type": "cloud", "networking": {"type": "limited"}, "packages": {"pip": ["x"]}}
        )
    assert "allow_package_managers" in exc_info.value.message
