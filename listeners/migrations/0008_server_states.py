import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("listeners", "0007_listener_access_log"),
    ]

    operations = [
        migrations.AddField(
            model_name="backendserver",
            name="state",
            field=models.CharField(
                choices=[
                    ("enabled", "Enabled"),
                    ("draining", "Draining"),
                    ("maintenance", "Maintenance"),
                ],
                default="enabled",
                max_length=12,
            ),
        ),
        migrations.AddField(
            model_name="backendserver",
            name="deregistration_delay",
            field=models.PositiveSmallIntegerField(
                default=300,
                validators=[
                    django.core.validators.MinValueValidator(0),
                    django.core.validators.MaxValueValidator(3600),
                ],
            ),
        ),
        migrations.AddField(
            model_name="backendserver",
            name="draining_since",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
