"""Upload forms: each PEM field takes a file or pasted text, and errors land on their field."""

from __future__ import annotations

from django import forms
from django.core.files.uploadedfile import UploadedFile

from certificates import revocation, validation
from certificates.models import Certificate

MAX_FILE_BYTES = validation.MAX_FIELD_BYTES


class SecretTextarea(forms.Textarea):
    """A textarea that never renders its value back, so a failed upload cannot echo a key."""

    def format_value(self, value: object) -> None:
        return None


def _read_upload(upload: UploadedFile | None) -> bytes | None:
    if upload is None:
        return None
    upload.seek(0)
    # One byte over the limit is enough for the validator to say the field is too large,
    # without reading an arbitrarily large file into memory.
    return upload.read(MAX_FILE_BYTES + 1)


def _kib(size: int) -> str:
    return f"{size / 1024:.0f}" if size >= 10 * 1024 else f"{size / 1024:.1f}"


class PemUploadForm(forms.Form):
    """Shared handling: for each PEM field, a file (if chosen) wins over pasted text.

    After a failed upload the browser cannot fill a file input again, so the text of a chosen
    certificate or chain file is carried into its textarea (it is public), and the operator is
    told to choose a private key file again (a key is never sent back to the browser).
    """

    pem_fields: tuple[str, ...] = ()
    # PEM fields that must be pasted or uploaded: marked required, though either input will do.
    required_pem_fields: tuple[str, ...] = ()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name in self.required_pem_fields:
            self.fields[name].marked_required = True

    def chosen_file(self, name: str) -> UploadedFile | None:
        """The file chosen for PEM field ``name``, if any and not empty."""
        upload = self.files.get(self.add_prefix(f"{name}_file")) if self.is_bound else None
        return upload if upload and upload.size else None

    def pem_input(self, name: str) -> str | bytes | None:
        data = _read_upload(self.cleaned_data.get(f"{name}_file"))
        # An empty file counts as not chosen, so the validator names the field that is empty
        # (or, for the optional chain, takes it as no chain).
        if data:
            return data
        return self.cleaned_data.get(name) or ""

    def clean(self) -> dict:
        cleaned = super().clean()
        for name in self.pem_fields:
            upload = self.chosen_file(name)
            # The size of the whole file, known from the upload, not of the part read.
            if upload and upload.size > MAX_FILE_BYTES:
                self.add_error(
                    name,
                    f"The {self.fields[name].label} file {upload.name} is {_kib(upload.size)} "
                    f"KiB; the limit is {MAX_FILE_BYTES // 1024} KiB.",
                )
        return cleaned

    def add_certificate_error(self, error: validation.CertificateError) -> None:
        field = error.field if error.field in self.fields else None
        message = error.message
        upload = self.chosen_file(field) if field in self.pem_fields else None
        if upload is not None:
            # Say which file the problem is in: the operator chose it, they did not paste it.
            message = f"In the chosen file {upload.name}: {message}"
        self.add_error(field, message)

    def full_clean(self) -> None:
        super().full_clean()
        if self.is_bound and self._errors:
            self._keep_chosen_files()

    def _keep_chosen_files(self) -> None:
        data = self.data.copy()
        for name in self.pem_fields:
            field = self.fields[name]
            upload = self.chosen_file(name)
            secret = isinstance(field.widget, SecretTextarea)
            if upload is None:
                if secret and self.data.get(self.add_prefix(name)):
                    field.kept_note = f"Paste the {field.label} again: it is never sent back."
                continue
            # A key file is never read back into the page.
            text = None if secret else self._text_of(upload)
            if text is None:
                field.kept_note = f"Choose {upload.name} again, or another file."
                continue
            data[self.add_prefix(name)] = text
            field.kept_note = f"The text of {upload.name} is kept in the field above."
        self.data = data

    @staticmethod
    def _text_of(upload: UploadedFile) -> str | None:
        if upload.size > MAX_FILE_BYTES:
            return None
        try:
            return _read_upload(upload).decode("utf-8")
        except UnicodeDecodeError:
            return None


class ServerCertificateForm(PemUploadForm):
    pem_fields = ("certificate", "private_key", "chain")
    required_pem_fields = ("certificate", "private_key")

    name = forms.CharField(label="Certificate Name", max_length=128)
    certificate = forms.CharField(
        label="Certificate",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 6, "placeholder": "-----BEGIN CERTIFICATE-----"}),
        help_text="PEM. The leaf certificate only; intermediates go in Certificate Chain.",
    )
    certificate_file = forms.FileField(
        label="Certificate file", required=False, allow_empty_file=True
    )
    private_key = forms.CharField(
        label="Private Key",
        required=False,
        strip=False,
        widget=SecretTextarea(
            attrs={"rows": 6, "placeholder": "Paste the PEM key (PKCS#1, SEC1 or PKCS#8)"}
        ),
        help_text="PEM. RSA 1024/2048/4096 or ECDSA P-256/P-384/P-521. Stored encrypted and "
        "never shown again.",
    )
    private_key_file = forms.FileField(
        label="Private Key file", required=False, allow_empty_file=True
    )
    chain = forms.CharField(
        label="Certificate Chain",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="Optional. Intermediate certificates in order: each signed by the next.",
    )
    chain_file = forms.FileField(
        label="Certificate Chain file", required=False, allow_empty_file=True
    )
    passphrase = forms.CharField(
        label="Private Key Passphrase",
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Only if the private key is encrypted.",
    )

    def __init__(self, *args, require_name: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not require_name:
            del self.fields["name"]
        self.validated: validation.ValidatedServerCertificate | None = None

    def clean(self) -> dict:
        cleaned = super().clean()
        if self.errors:
            return cleaned
        try:
            self.validated = validation.validate_server_certificate(
                self.pem_input("certificate"),
                self.pem_input("private_key"),
                self.pem_input("chain") or None,
                cleaned.get("passphrase") or None,
            )
        except validation.CertificateError as error:
            self.add_certificate_error(error)
        return cleaned


class CaCertificateForm(PemUploadForm):
    pem_fields = ("certificate",)
    required_pem_fields = ("certificate",)

    name = forms.CharField(label="Certificate Name", max_length=128)
    certificate = forms.CharField(
        label="CA Certificate",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 6, "placeholder": "-----BEGIN CERTIFICATE-----"}),
        help_text="PEM. A CA certificate (basicConstraints CA:TRUE) that signs client "
        "certificates for mutual authentication.",
    )
    certificate_file = forms.FileField(
        label="CA Certificate file", required=False, allow_empty_file=True
    )

    def __init__(self, *args, require_name: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not require_name:
            del self.fields["name"]
        self.validated: validation.ValidatedCaCertificate | None = None

    def clean(self) -> dict:
        cleaned = super().clean()
        if self.errors:
            return cleaned
        try:
            self.validated = validation.validate_ca_certificate(self.pem_input("certificate"))
        except validation.CertificateError as error:
            self.add_certificate_error(error)
        return cleaned


def form_class_for(kind: str) -> type[PemUploadForm]:
    return ServerCertificateForm if kind == Certificate.Kind.SERVER else CaCertificateForm


class CrlUploadForm(forms.Form):
    """A revocation list for one CA certificate: pasted PEM, or a PEM or DER file."""

    crl = forms.CharField(
        label="CRL",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 6, "placeholder": "-----BEGIN X509 CRL-----"}),
        help_text=f"PEM, or choose a PEM or DER file, or give only a Distribution Point URL "
        f"below. At most "
        f"{revocation.MAX_CRL_BYTES // (1024 * 1024)} MiB. A newer CRL of the same issuer "
        "replaces the stored one.",
    )
    crl_file = forms.FileField(label="CRL file", required=False, allow_empty_file=True)
    issuer_chain = forms.CharField(
        label="Issuer Certificates",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "-----BEGIN CERTIFICATE-----"}),
        help_text="Only for the CRL of an intermediate CA below this CA: that intermediate's "
        "certificate first, then any above it up to this CA. PEM.",
    )

    url = forms.URLField(
        label="Distribution Point URL",
        required=False,
        max_length=2048,
        assume_scheme="https",
        help_text="Optional. The console fetches the CRL from this http or https URL (now, "
        "if no CRL is given above, and then on a schedule) and pushes it when it changes.",
    )

    def __init__(self, *args, ca_certificate: Certificate, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["crl"].marked_required = True
        self.ca_certificate = ca_certificate
        self.validated: revocation.ValidatedCrl | None = None

    def clean(self) -> dict:
        cleaned = super().clean()
        upload = cleaned.get("crl_file")
        data: str | bytes = cleaned.get("crl") or ""
        if upload is not None and upload.size:
            if upload.size > revocation.MAX_CRL_BYTES:
                self.add_error(
                    "crl",
                    f"The CRL file {upload.name} is {upload.size / (1024 * 1024):.1f} MiB; the "
                    f"limit is {revocation.MAX_CRL_BYTES // (1024 * 1024)} MiB.",
                )
                return cleaned
            upload.seek(0)
            data = upload.read(revocation.MAX_CRL_BYTES + 1)
        url = cleaned.get("url") or ""
        if self.has_error("url"):
            return cleaned
        fetched = False
        try:
            if url:
                revocation.check_fetch_url(url)
                if not data.strip():
                    # Only a URL: the CRL is fetched now, so a bad one is refused at once.
                    data, fetched = revocation.fetch_crl(url), True
            self.validated = revocation.validate_crl(
                data, self.ca_certificate.certificate_pem, cleaned.get("issuer_chain") or None
            )
        except revocation.CrlError as error:
            field, message = error.field, error.message
            if fetched and field == revocation.CRL:
                field, message = revocation.URL, f"The CRL this URL serves is refused: {message}"
            elif upload is not None and upload.size and field == revocation.CRL:
                message = f"In the chosen file {upload.name}: {message}"
            self.add_error(field, message)
        return cleaned
