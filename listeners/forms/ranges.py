"""Number fields state their range twice: to the browser (min/max) and in the server's message.

A ModelForm's number field takes its range from the model's validators, which Django does not
pass to the form field; the message names the field and the range, as the seeds write them
("Health Check Interval must be 1-300 s."), instead of "Ensure this value is less than or equal
to 300.".
"""

from __future__ import annotations

import re

from django import forms
from django.core.exceptions import FieldDoesNotExist
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

# "Health Check Interval (s)" -> name "Health Check Interval", unit "s".
_LABEL_WITH_UNIT = re.compile(r"^(?P<name>.*?)\s*\((?P<unit>[^()]+)\)$")


def range_message(label: str, low: int, high: int) -> str:
    match = _LABEL_WITH_UNIT.match(label)
    if match:
        return f"{match['name']} must be {low}-{high} {match['unit']}."
    return f"{label} must be {low}-{high}."


def _model_bounds(model: type[models.Model], name: str) -> tuple[int | None, int | None]:
    try:
        validators = model._meta.get_field(name).validators
    except FieldDoesNotExist:  # a form-only field has no model bounds
        return None, None
    low = next((v.limit_value for v in validators if isinstance(v, MinValueValidator)), None)
    high = next((v.limit_value for v in validators if isinstance(v, MaxValueValidator)), None)
    return low, high


def state_ranges(form: forms.BaseForm, model: type[models.Model] | None = None) -> None:
    """Give every bounded integer field of ``form`` browser min/max and a message naming them."""
    for name, field in form.fields.items():
        if not isinstance(field, forms.IntegerField):
            continue
        low, high = field.min_value, field.max_value
        if model is not None:
            model_low, model_high = _model_bounds(model, name)
            low = model_low if model_low is not None else low
            high = model_high if model_high is not None else high
        if low is None or high is None:
            continue
        field.min_value, field.max_value = low, high
        field.validators = [
            validator
            for validator in field.validators
            if not isinstance(validator, MinValueValidator | MaxValueValidator)
        ] + [MinValueValidator(low), MaxValueValidator(high)]
        field.widget.attrs.update({"min": low, "max": high})
        # Django fills these messages in with %-formatting: a "%" unit must be doubled.
        message = range_message(str(field.label), low, high).replace("%", "%%")
        field.error_messages = {
            **field.error_messages,
            "min_value": message,
            "max_value": message,
        }
