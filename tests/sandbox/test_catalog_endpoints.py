"""Accounts, metrics, flows (actions, messages) and campaigns (messages) over real HTTP.

Every body passes ``KlaviyoTestClient``, which validates it against the spec's closed schema.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from klaviyo_sandbox.testing import api_client


@pytest.fixture(scope="module")
def api(sandbox):
    client = api_client(sandbox, 0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def other_api(sandbox):
    client = api_client(sandbox, 1)
    yield client
    client.close()


@pytest.fixture(scope="module")
def account(sandbox):
    return next(iter(sandbox.sandbox.store.accounts.values()))


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["errors"][0]


def _all(api, path: str, **params: str) -> list[dict]:
    return [item for page in api.iter_pages(path, params=params or None) for item in page["data"]]


def _pages(api, path: str, **params: str) -> list[dict]:
    return list(api.iter_pages(path, params=params or None))


def _sparse_get(api, operation_id: str, path: str, params: dict[str, str]) -> dict:
    """GET with a sparse fieldset; the shared client validates it as a sparse answer of ``operation_id``."""
    response = api.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------------------- accounts


def test_accounts_lists_exactly_the_callers_account(api, other_api, account):
    body = api.get("/api/accounts").json()
    assert [a["id"] for a in body["data"]] == [account.id]
    attributes = body["data"][0]["attributes"]
    assert attributes["public_api_key"] == account.public_api_key
    assert attributes["timezone"] == account.timezone
    assert set(attributes["contact_information"]["street_address"]) == {
        "address1",
        "address2",
        "city",
        "region",
        "country",
        "zip",
    }
    other = other_api.get("/api/accounts").json()["data"]
    assert len(other) == 1 and other[0]["id"] != account.id


def test_account_by_id_never_leaks_across_accounts(api, other_api, account):
    assert api.get(f"/api/accounts/{account.id}").json()["data"]["id"] == account.id
    error = _error(other_api.get(f"/api/accounts/{account.id}"), 404)
    assert error["detail"] == f"Account with id {account.id} not found."
    assert _error(api.get("/api/accounts/NOPE01"), 404)["code"] == "not_found"


def test_account_sparse_fieldset(api):
    params = {"fields[account]": "timezone,contact_information.organization_name"}
    attributes = _sparse_get(api, "get_accounts", "/api/accounts", params)["data"][0]["attributes"]
    assert set(attributes) == {"timezone", "contact_information"}
    assert set(attributes["contact_information"]) == {"organization_name"}


# ---------------------------------------------------------------------------- metrics


def test_metrics_catalog_and_integration_filter(api, account):
    metrics = _all(api, "/api/metrics")
    assert {m["id"] for m in metrics} == set(account.metrics)
    names = {m["attributes"]["name"] for m in metrics}
    assert {"Received Email", "Opened Email", "Clicked Email", "Placed Order"} <= names
    klaviyo = _all(api, "/api/metrics", filter="equals(integration.name,'Klaviyo')")
    assert klaviyo and all(m["attributes"]["integration"]["name"] == "Klaviyo" for m in klaviyo)
    assert "Received Email" in {m["attributes"]["name"] for m in klaviyo}
    assert "Placed Order" not in {m["attributes"]["name"] for m in klaviyo}
    category = _all(api, "/api/metrics", filter="equals(integration.category,'eCommerce')")
    assert {m["id"] for m in category} == {m["id"] for m in metrics} - {m["id"] for m in klaviyo}


def test_metrics_take_no_page_size_and_reject_other_filters(api):
    assert _error(api.get("/api/metrics", params={"page[size]": "5"}), 400)["source"] == {
        "parameter": "page[size]"
    }
    error = _error(api.get("/api/metrics", params={"filter": "equals(name,'Opened Email')"}), 400)
    assert error["source"] == {"parameter": "filter"}
    assert _error(api.get("/api/metrics", params={"filter": "contains(integration.name,'Kla')"}), 400)


def test_get_metric_sparse_fields_and_404(api):
    metric = _all(api, "/api/metrics")[0]
    one = api.get(f"/api/metrics/{metric['id']}").json()["data"]
    assert one == metric
    assert one["relationships"]["flow-triggers"]["links"]["related"].endswith(
        f"/api/metrics/{metric['id']}/flow-triggers/"
    )
    sparse = api.get(f"/api/metrics/{metric['id']}", params={"fields[metric]": "name"}).json()["data"]
    assert sparse["attributes"] == {"name": metric["attributes"]["name"]}
    assert "relationships" not in sparse
    assert _error(api.get("/api/metrics/ZZZZZZ"), 404)["detail"] == "Metric with id ZZZZZZ not found."


# ---------------------------------------------------------------------------- flows


def test_flows_page_through_every_flow_without_duplicates(api, account):
    pages = _pages(api, "/api/flows", **{"page[size]": "2"})
    assert len(pages) >= 3
    ids = [f["id"] for page in pages for f in page["data"]]
    assert len(ids) == len(set(ids)) == len(account.flows)
    assert all(len(page["data"]) == 2 for page in pages[:-1])
    assert pages[-1]["links"]["next"] is None
    next_query = parse_qs(urlsplit(pages[0]["links"]["next"]).query)
    assert next_query["page[size]"] == ["2"] and "page[cursor]" in next_query


def test_flows_page_size_is_capped_at_50(api):
    assert api.get("/api/flows", params={"page[size]": "50"}).status_code == 200
    assert _error(api.get("/api/flows", params={"page[size]": "51"}), 400)["source"] == {
        "parameter": "page[size]"
    }


def test_flow_filters(api, account):
    live = _all(api, "/api/flows", filter="equals(status,'live')")
    assert {f["id"] for f in live} == {f.id for f in account.flows.values() if f.status == "live"}
    archived = _all(api, "/api/flows", filter="equals(archived,true)")
    assert archived and all(f["attributes"]["archived"] for f in archived)
    carts = _all(api, "/api/flows", filter="contains(name,'Cart')")
    assert [f["attributes"]["name"] for f in carts] == ["Abandoned Cart"]
    by_list = _all(api, "/api/flows", filter="equals(trigger_type,'Added to List')")
    assert {f["attributes"]["trigger_type"] for f in by_list} == {"Added to List"}
    oldest = min(account.flows.values(), key=lambda f: f.created)
    cutoff = oldest.created.isoformat()
    newer = _all(api, "/api/flows", filter=f"greater-than(created,{cutoff})")
    assert oldest.id not in {f["id"] for f in newer} and len(newer) == len(account.flows) - 1
    chosen = sorted(account.flows)[:2]
    any_of = _all(api, "/api/flows", filter=f"any(id,{chosen!r})".replace("'", '"'))
    assert {f["id"] for f in any_of} == set(chosen)


@pytest.mark.parametrize(
    "bad",
    [
        "equals(trigger_type,'Sometimes')",
        "equals(colour,'red')",
        "greater-than(name,'A')",
        "equals(archived,'yes')",
    ],
)
def test_flow_filter_rejects_fields_operators_and_values_not_allowed(api, bad):
    assert _error(api.get("/api/flows", params={"filter": bad}), 400)["source"] == {"parameter": "filter"}


def test_flow_sort_orders(api):
    by_name = [f["attributes"]["name"] for f in _all(api, "/api/flows", sort="name", **{"page[size]": "2"})]
    assert by_name == sorted(by_name)
    descending = [
        f["attributes"]["name"] for f in _all(api, "/api/flows", sort="-name", **{"page[size]": "2"})
    ]
    assert descending == by_name[::-1]
    created = [f["attributes"]["created"] for f in _all(api, "/api/flows", sort="-created")]
    assert created == sorted(created, reverse=True)


def test_flows_include_actions_and_tags(api, account):
    body = api.get("/api/flows", params={"include": "flow-actions,tags"}).json()
    included = {(item["type"], item["id"]) for item in body["included"]}
    for flow in body["data"]:
        linked = flow["relationships"]["flow-actions"]["data"]
        assert [a["id"] for a in linked] == account.flows[flow["id"]].action_ids
        assert {("flow-action", a["id"]) for a in linked} <= included
        assert flow["relationships"]["tags"]["data"] == []
    assert {kind for kind, _ in included} == {"flow-action"}
    plain = api.get("/api/flows").json()
    assert "included" not in plain
    assert all("data" not in f["relationships"]["flow-actions"] for f in plain["data"])


def test_flow_sparse_fieldset(api):
    data = api.get("/api/flows", params={"fields[flow]": "name,status"}).json()["data"]
    assert all(set(f["attributes"]) == {"name", "status"} and "relationships" not in f for f in data)


def test_flow_definition_is_built_from_its_actions(api, account):
    flow = next(f for f in account.flows.values() if len(f.action_ids) >= 3)
    plain = api.get(f"/api/flows/{flow.id}").json()["data"]
    assert "definition" not in plain["attributes"]
    body = api.get(f"/api/flows/{flow.id}", params={"additional-fields[flow]": "definition"}).json()
    definition = body["data"]["attributes"]["definition"]
    assert [a["id"] for a in definition["actions"]] == flow.action_ids
    assert definition["entry_action_id"] == flow.action_ids[0]
    assert (
        definition["triggers"][0]["type"] == {"Metric": "metric", "Added to List": "list"}[flow.trigger_type]
    )
    chain = [a["links"]["next"] for a in definition["actions"]]
    assert chain == [*flow.action_ids[1:], None]
    types = {a["type"] for a in definition["actions"]}
    assert types <= {"send-email", "time-delay"} and "send-email" in types
    email = next(a for a in definition["actions"] if a["type"] == "send-email")
    assert email["data"]["message"]["subject_line"] and email["data"]["status"] == flow.status


def test_flow_404_and_another_accounts_key_cannot_read_it(api, other_api, account):
    flow_id = next(iter(account.flows))
    assert api.get(f"/api/flows/{flow_id}").status_code == 200
    error = _error(other_api.get(f"/api/flows/{flow_id}"), 404)
    assert error["detail"] == f"Flow with id {flow_id} not found."
    assert _error(other_api.get(f"/api/flows/{flow_id}/flow-actions"), 404)
    action_id = account.flows[flow_id].action_ids[0]
    assert _error(other_api.get(f"/api/flow-actions/{action_id}"), 404)
    assert _error(api.get("/api/flows/NOPE01"), 404)


def test_flow_actions_for_a_flow(api, account):
    flow = next(f for f in account.flows.values() if len(f.action_ids) >= 3)
    pages = _pages(api, f"/api/flows/{flow.id}/flow-actions", **{"page[size]": "2"})
    actions = [a for page in pages for a in page["data"]]
    assert [a["id"] for a in actions] == flow.action_ids
    assert all(a["relationships"]["flow"]["data"] == {"type": "flow", "id": flow.id} for a in actions)
    ids = api.get(f"/api/flows/{flow.id}/relationships/flow-actions").json()["data"]
    assert ids == [{"type": "flow-action", "id": a} for a in flow.action_ids]
    emails = _all(api, f"/api/flows/{flow.id}/flow-actions", filter="equals(action_type,'SEND_EMAIL')")
    assert emails and all(a["attributes"]["definition"]["type"] == "send-email" for a in emails)
    delays = _all(
        api, f"/api/flows/{flow.id}/relationships/flow-actions", filter="equals(action_type,'TIME_DELAY')"
    )
    assert {d["id"] for d in delays} == {a["id"] for a in actions} - {a["id"] for a in emails}
    newest_first = _all(api, f"/api/flows/{flow.id}/flow-actions", sort="-id")
    assert [a["id"] for a in newest_first] == sorted(flow.action_ids, reverse=True)


def test_flow_action_with_its_flow_and_messages(api, account):
    action = next(a for a in account.flow_actions.values() if a.message_ids)
    body = api.get(f"/api/flow-actions/{action.id}", params={"include": "flow,flow-messages"}).json()
    data = body["data"]
    assert data["attributes"]["definition"]["type"] == "send-email"
    assert data["relationships"]["flow-messages"]["data"] == [
        {"type": "flow-message", "id": m} for m in action.message_ids
    ]
    assert {(i["type"], i["id"]) for i in body["included"]} == {
        ("flow", action.flow_id),
        *(("flow-message", m) for m in action.message_ids),
    }
    flow = api.get(f"/api/flow-actions/{action.id}/flow").json()["data"]
    assert flow["id"] == action.flow_id and flow["type"] == "flow"
    linkage = api.get(f"/api/flow-actions/{action.id}/relationships/flow").json()["data"]
    assert linkage == {"type": "flow", "id": action.flow_id}
    assert _error(api.get("/api/flow-actions/999999999"), 404)


def test_flow_messages_and_their_parent_action(api, account):
    action = next(a for a in account.flow_actions.values() if a.message_ids)
    messages = _all(api, f"/api/flow-actions/{action.id}/flow-messages")
    assert [m["id"] for m in messages] == action.message_ids
    ids = api.get(f"/api/flow-actions/{action.id}/relationships/flow-messages").json()["data"]
    assert ids == [{"type": "flow-message", "id": m} for m in action.message_ids]
    message_id = action.message_ids[0]
    body = api.get(f"/api/flow-messages/{message_id}", params={"include": "flow-action"}).json()
    message = body["data"]
    assert message["attributes"]["channel"] == "Email"
    definition = message["attributes"]["definition"]
    assert definition["id"] == message_id and definition["subject_line"] and definition["from_email"]
    assert message["relationships"]["flow-action"]["data"] == {"type": "flow-action", "id": action.id}
    assert [i["id"] for i in body["included"]] == [action.id]
    parent = api.get(f"/api/flow-messages/{message_id}/flow-action").json()["data"]
    assert parent["id"] == action.id
    linkage = api.get(f"/api/flow-messages/{message_id}/relationships/flow-action").json()["data"]
    assert linkage == {"type": "flow-action", "id": action.id}
    name = account.flow_messages[message_id].name
    named = _all(api, f"/api/flow-actions/{action.id}/flow-messages", filter=f"equals(name,'{name}')")
    assert [m["id"] for m in named] == [message_id]
    assert _error(api.get("/api/flow-messages/NOPE01"), 404)


def test_flow_tags_are_empty(api, account):
    flow_id = next(iter(account.flows))
    assert api.get(f"/api/flows/{flow_id}/tags").json()["data"] == []
    assert api.get(f"/api/flows/{flow_id}/relationships/tags").json()["data"] == []


# ---------------------------------------------------------------------------- campaigns


def test_campaigns_require_a_channel_filter(api):
    assert _error(api.get("/api/campaigns"), 400)["source"] == {"parameter": "filter"}
    error = _error(api.get("/api/campaigns", params={"filter": "equals(status,'Sent')"}), 400)
    assert "channel" in error["detail"] and error["source"] == {"parameter": "filter"}
    assert _error(api.get("/api/campaigns", params={"filter": "equals(messages.channel,'fax')"}), 400)


def test_campaigns_by_channel_cover_every_campaign(api, account):
    email = _all(api, "/api/campaigns", filter="equals(messages.channel,'email')")
    sms = _all(api, "/api/campaigns", filter="equals(messages.channel,'sms')")
    assert email and sms
    assert {c["id"] for c in email} | {c["id"] for c in sms} == set(account.campaigns)
    assert all(account.campaigns[c["id"]].channel == "email" for c in email)
    assert all(c["attributes"]["tracking_options"]["is_tracking_opens"] for c in email)


def test_campaign_pages_filters_and_sort(api, account):
    channel = "equals(messages.channel,'email')"
    pages = _pages(api, "/api/campaigns", filter=channel, sort="-created_at", **{"page[size]": "2"})
    campaigns = [c for page in pages for c in page["data"]]
    expected = [c for c in account.campaigns.values() if c.channel == "email"]
    assert len(pages) >= 2 and len({c["id"] for c in campaigns}) == len(campaigns) == len(expected)
    created = [c["attributes"]["created_at"] for c in campaigns]
    assert created == sorted(created, reverse=True)
    sent = _all(api, "/api/campaigns", filter=f"{channel},equals(status,'Sent')")
    assert sent and all(c["attributes"]["status"] == "Sent" for c in sent)
    either = _all(api, "/api/campaigns", filter=f"and({channel},any(status,['Sent','Draft']))")
    assert {c["attributes"]["status"] for c in either} <= {"Sent", "Draft"} and len(either) >= len(sent)
    assert _error(api.get("/api/campaigns", params={"filter": channel, "page[size]": "101"}), 400)
    assert _error(api.get("/api/campaigns", params={"filter": f"{channel},equals(send_time,'x')"}), 400)


def test_campaigns_include_messages(api, account):
    body = api.get(
        "/api/campaigns",
        params={"filter": "equals(messages.channel,'email')", "include": "campaign-messages,tags"},
    ).json()
    included = {item["id"]: item for item in body["included"]}
    for campaign in body["data"]:
        linked = campaign["relationships"]["campaign-messages"]["data"]
        assert [m["id"] for m in linked] == account.campaigns[campaign["id"]].message_ids
        for link in linked:
            message = included[link["id"]]
            assert message["relationships"]["campaign"]["data"] == {"type": "campaign", "id": campaign["id"]}
            assert message["attributes"]["definition"]["channel"] == "email"
        assert campaign["relationships"]["tags"]["data"] == []


def test_campaign_its_messages_and_404(api, other_api, account):
    campaign = next(c for c in account.campaigns.values() if c.channel == "sms")
    data = api.get(f"/api/campaigns/{campaign.id}").json()["data"]
    assert data["attributes"]["name"] == campaign.name
    assert _error(other_api.get(f"/api/campaigns/{campaign.id}"), 404)
    assert _error(api.get("/api/campaigns/01ZZZZZZZZZZZZZZZZZZZZZZZZ"), 404)
    messages = api.get(
        f"/api/campaigns/{campaign.id}/campaign-messages", params={"include": "campaign"}
    ).json()
    assert [m["id"] for m in messages["data"]] == campaign.message_ids
    assert messages["data"][0]["attributes"]["definition"]["channel"] == "sms"
    assert messages["data"][0]["attributes"]["definition"]["content"]["body"]
    assert [i["id"] for i in messages["included"]] == [campaign.id]
    ids = api.get(f"/api/campaigns/{campaign.id}/relationships/campaign-messages").json()["data"]
    assert ids == [{"type": "campaign-message", "id": m} for m in campaign.message_ids]
    assert api.get(f"/api/campaigns/{campaign.id}/tags").json()["data"] == []
    assert api.get(f"/api/campaigns/{campaign.id}/relationships/tags").json()["data"] == []


def test_campaign_message_and_its_campaign(api, account):
    campaign = next(c for c in account.campaigns.values() if c.channel == "email" and c.send_time)
    message_id = campaign.message_ids[0]
    body = api.get(f"/api/campaign-messages/{message_id}", params={"include": "campaign"}).json()
    attributes = body["data"]["attributes"]
    assert attributes["definition"]["content"]["subject"]
    assert attributes["send_times"][0]["datetime"] == campaign.send_time.isoformat()
    assert body["included"][0]["id"] == campaign.id
    parent = api.get(f"/api/campaign-messages/{message_id}/campaign").json()["data"]
    assert parent["id"] == campaign.id
    linkage = api.get(f"/api/campaign-messages/{message_id}/relationships/campaign").json()["data"]
    assert linkage == {"type": "campaign", "id": campaign.id}
    params = {"fields[campaign-message]": "definition.label"}
    sparse = _sparse_get(api, "get_campaign_message", f"/api/campaign-messages/{message_id}", params)
    assert sparse["data"]["attributes"] == {"definition": {"label": campaign.name}}
    assert _error(api.get("/api/campaign-messages/01ZZZZZZZZZZZZZZZZZZZZZZZZ"), 404)
