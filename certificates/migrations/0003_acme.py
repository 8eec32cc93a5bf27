# Written by hand (the ACME work): accounts, issuances, attempts, challenges and webhook alerts.
import django.db.models.deletion
from django.db import migrations, models

import certificates.acme_models


class Migration(migrations.Migration):

    dependencies = [
        ('certificates', '0002_certificate_revocation_lists'),
        ('console', '0008_traffic_samples'),
    ]

    operations = [
        migrations.CreateModel(
            name='AcmeAttempt',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('kind', models.CharField(choices=[('issue', 'Issue'), ('renew', 'Renew')], max_length=8)),
                ('state', models.CharField(choices=[('queued', 'Queued'), ('running', 'Running'), ('succeeded', 'Succeeded'), ('failed', 'Failed')], default='queued', max_length=12)),
                ('step', models.CharField(blank=True, default='', max_length=255)),
                ('message', models.TextField(blank=True, default='')),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('started_at', models.DateTimeField(blank=True, null=True)),
                ('finished_at', models.DateTimeField(blank=True, null=True)),
            ],
            options={
                'ordering': ['-created_at', '-pk'],
            },
        ),
        migrations.CreateModel(
            name='AcmeAccount',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('directory_url', models.URLField(max_length=500)),
                ('email', models.EmailField(max_length=254)),
                ('private_key_token', models.TextField(editable=False)),
                ('uri', models.URLField(blank=True, default='', max_length=500)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('directory_url', 'email'), name='acme_account_per_ca')],
            },
        ),
        migrations.CreateModel(
            name='AcmeChallenge',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('type', models.CharField(choices=[('http-01', 'HTTP-01 (HTTP listener on port 80)'), ('tls-alpn-01', 'TLS-ALPN-01 (HTTPS listener on port 443)')], max_length=16)),
                ('domain', models.CharField(max_length=253)),
                ('token', models.CharField(max_length=256)),
                ('key_authorization', models.CharField(max_length=320)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('attempt', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='challenges', to='certificates.acmeattempt')),
                ('instance', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='acme_challenges', to='console.instance')),
            ],
            options={
                'ordering': ['pk'],
            },
        ),
        migrations.CreateModel(
            name='AcmeIssuance',
            fields=[
                ('id', models.CharField(default=certificates.acme_models.new_issuance_id, editable=False, max_length=16, primary_key=True, serialize=False)),
                ('name', models.CharField(max_length=128)),
                ('domains', models.JSONField(default=list)),
                ('directory_url', models.URLField(max_length=500)),
                ('email', models.EmailField(max_length=254)),
                ('challenge', models.CharField(choices=[('http-01', 'HTTP-01 (HTTP listener on port 80)'), ('tls-alpn-01', 'TLS-ALPN-01 (HTTPS listener on port 443)')], max_length=16)),
                ('key_algorithm', models.CharField(choices=[('ec-p256', 'ECDSA P-256'), ('rsa-2048', 'RSA 2048')], default='ec-p256', max_length=16)),
                ('auto_renew', models.BooleanField(default=True)),
                ('renew_at', models.DateTimeField(blank=True, null=True)),
                ('retry_at', models.DateTimeField(blank=True, null=True)),
                ('consecutive_failures', models.PositiveIntegerField(default=0)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('certificate', models.OneToOneField(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='acme', to='certificates.certificate')),
                ('instance', models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='acme_issuances', to='console.instance')),
            ],
            options={
                'ordering': ['-created_at'],
            },
        ),
        migrations.AddField(
            model_name='acmeattempt',
            name='issuance',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='attempts', to='certificates.acmeissuance'),
        ),
        migrations.CreateModel(
            name='CertificateAlert',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('event', models.CharField(choices=[('certificate.expires_soon', 'Expires soon'), ('certificate.renewal_failed', 'Renewal failed')], max_length=40)),
                ('dedupe_key', models.CharField(blank=True, max_length=200, null=True, unique=True)),
                ('payload', models.JSONField()),
                ('delivery', models.CharField(choices=[('pending', 'Pending'), ('delivered', 'Delivered'), ('failed', 'Failed'), ('not_configured', 'No webhook configured')], default='pending', max_length=16)),
                ('delivery_attempts', models.PositiveIntegerField(default=0)),
                ('last_error', models.CharField(blank=True, default='', max_length=500)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('delivered_at', models.DateTimeField(blank=True, null=True)),
                ('certificate', models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='alerts', to='certificates.certificate')),
            ],
            options={
                'ordering': ['-created_at', '-pk'],
            },
        ),
    ]
