# Placeholder kept in the chain so that later certificates migrations can depend on it; the
# revocation-list work fills in its operations by hand.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("certificates", "0001_initial")]

    operations: list = []
