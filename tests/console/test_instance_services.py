"""Instances and nodes change through console/services.py, as listeners do through theirs."""

from __future__ import annotations

import pytest

from console import services
from console.models import DataplaneNode, Instance
from listeners.services import InUse, RuleViolation
from tests.fixtures.listeners import make_listener

pytestmark = pytest.mark.django_db

TOKEN = "t" * 32


def test_adding_a_node_pushes_the_instance_to_it(instance: Instance) -> None:
    before = instance.generation
    node = services.add_node(
        instance_id=instance.pk, name="edge-1", control_url="http://127.0.0.1:9901", token=TOKEN
    )
    instance.refresh_from_db()
    assert instance.generation == before + 1
    assert DataplaneNode.objects.get(pk=node.pk).token == TOKEN


def test_a_second_node_of_the_same_name_is_refused_on_its_field(instance: Instance) -> None:
    services.add_node(instance_id=instance.pk, name="edge-1", control_url="http://a:1", token=TOKEN)
    with pytest.raises(RuleViolation) as refused:
        services.add_node(
            instance_id=instance.pk, name="edge-1", control_url="http://b:1", token=TOKEN
        )
    assert refused.value.field == "name"
    assert instance.nodes.count() == 1


def test_removing_a_node_bumps_the_generation(instance: Instance) -> None:
    node = services.add_node(
        instance_id=instance.pk, name="edge-1", control_url="http://a:1", token=TOKEN
    )
    instance.refresh_from_db()
    before = instance.generation
    services.remove_node(instance_id=instance.pk, node_id=node.pk)
    instance.refresh_from_db()
    assert instance.generation == before + 1
    assert not instance.nodes.exists()


def test_an_instance_with_listeners_is_not_deleted(instance: Instance, server_group) -> None:
    listener = make_listener(instance, server_group)
    with pytest.raises(InUse) as in_use:
        services.delete_instance(instance_id=instance.pk)
    assert in_use.value.blockers == [listener]
    assert Instance.objects.filter(pk=instance.pk).exists()
