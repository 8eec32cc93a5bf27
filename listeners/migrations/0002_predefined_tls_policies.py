"""Create the five predefined TLS security policies (data in listeners/predefined.py)."""

from django.db import migrations

from listeners.predefined import ensure_predefined_policies


def create(apps, schema_editor):
    ensure_predefined_policies(apps.get_model("listeners", "TlsPolicy"))


def remove(apps, schema_editor):
    apps.get_model("listeners", "TlsPolicy").objects.filter(predefined=True).delete()


class Migration(migrations.Migration):
    dependencies = [("listeners", "0001_initial")]
    operations = [migrations.RunPython(create, remove)]
