"""Forwarding rules between the console's rows and the dataplane's schema."""

from __future__ import annotations

from dataplane import rules as dp_rules
from listeners.models import ForwardingRule


def to_dataplane_rule(rule_id: str, name: str, conditions: list[dict], action: dict):
    """The dataplane's ForwardingRule for stored (or about to be stored) rule fields."""
    kind = action["action"] if "action" in action else action["type"]
    group = action.get("server_group")
    return dp_rules.ForwardingRule(
        id=rule_id,
        name=name,
        conditions=tuple(
            dp_rules.RuleCondition(
                type=c["type"],
                values=tuple(c.get("values", ())),
                match=c.get("match", "prefix"),
                name=c.get("name"),
            )
            for c in conditions
        ),
        action=dp_rules.RuleAction(
            type=kind,
            server_group_id=getattr(group, "id", group) if kind == "forward" else None,
            status_code=action.get("status_code") if kind != "forward" else None,
            protocol=(action.get("redirect_protocol") or None) if kind == "redirect" else None,
            host=action.get("redirect_host") or "${host}",
            port=action.get("redirect_port") if kind == "redirect" else None,
            path=action.get("redirect_path") or "${path}",
            query=action.get("redirect_query") or "${query}",
            content_type=action.get("content_type") or "text/plain",
            body=(action.get("body") or "") if kind == "fixed_response" else "",
        ),
        # Seeds 001/003 throttling: checked when the rule matches, before its action.
        qps_per_client_ip=action.get("qps_per_client_ip"),
    )


def stored_rule(rule: ForwardingRule) -> dp_rules.ForwardingRule:
    return to_dataplane_rule(rule.rule_id, rule.name, rule.conditions, rule.action_fields())
