from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("listeners", "0006_http2_response_timeout_grpc"),
    ]

    operations = [
        migrations.AddField(
            model_name="listener",
            name="access_log",
            field=models.BooleanField(default=False),
        ),
    ]
