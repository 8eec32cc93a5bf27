# Revocation lists for mutual TLS (issue 19 item 5); written by hand in the chain's second place.
import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("certificates", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="certificate",
            name="crl_summary",
            field=models.JSONField(blank=True, default=list, editable=False),
        ),
        migrations.CreateModel(
            name="CertificateRevocationList",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("issuer", models.CharField(max_length=1024)),
                ("issuer_chain_pem", models.TextField(blank=True, default="")),
                ("issuer_chain_subjects", models.JSONField(blank=True, default=list)),
                ("der", models.BinaryField()),
                ("fingerprint_sha256", models.CharField(max_length=95)),
                ("crl_number", models.CharField(blank=True, default="", max_length=64)),
                ("this_update", models.DateTimeField()),
                ("next_update", models.DateTimeField()),
                ("revoked_count", models.PositiveIntegerField()),
                (
                    "source",
                    models.CharField(
                        choices=[("upload", "Upload"), ("url", "Distribution Point URL")],
                        default="upload",
                        max_length=8,
                    ),
                ),
                ("url", models.URLField(blank=True, default="", max_length=2048)),
                ("fetched_at", models.DateTimeField(blank=True, null=True)),
                ("last_fetch_error", models.TextField(blank=True, default="")),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                (
                    "ca_certificate",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="revocation_lists",
                        to="certificates.certificate",
                    ),
                ),
            ],
            options={
                "ordering": ["ca_certificate", "issuer"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("ca_certificate", "issuer"), name="one_crl_per_issuer_and_ca"
                    )
                ],
            },
        ),
    ]
