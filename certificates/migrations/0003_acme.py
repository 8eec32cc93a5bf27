# Placeholder kept in the chain; the ACME work fills in its operations by hand.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("certificates", "0002_certificate_revocation_lists")]

    operations: list = []
