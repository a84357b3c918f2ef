"""Page texts in Spanish (the sellers' language in the original app) and English.

The language comes from the ``lang`` cookie that the language switch sets; Spanish is the default.
The REST API answers in English (its field names are the document's Spanish names).
"""

from __future__ import annotations

from typing import Any

DEFAULT = "es"
LANGUAGES = {"es": "Español", "en": "English"}
COOKIE = "lang"

_ES: dict[str, str] = {
    "app.title": "Predicción de ventas",
    "nav.capture": "Nueva oportunidad",
    "nav.list": "Mis oportunidades",
    "nav.team": "Oportunidades del equipo",
    "nav.dashboard": "Tablero de ventas",
    "nav.logout": "Salir",
    "nav.language": "Idioma",
    "login.title": "Ingresar",
    "login.username": "Usuario",
    "login.password": "Contraseña",
    "login.submit": "Ingresar",
    "login.wrong": "Usuario o contraseña incorrectos.",
    "login.limited": "Demasiados intentos fallidos. Vuelva a intentarlo en {seconds} s.",
    "login.required": "Ingrese para continuar.",
    "capture.title": "Ingrese los datos",
    "capture.submit": "Guardar y predecir",
    "capture.choose": "Elija…",
    "capture.errors": "Revise los campos marcados.",
    "capture.years_hint": "Si deja el TCV vacío, se calcula como ACV × años.",
    "capture.tcv_hint": "Valor total del contrato; al menos el ACV.",
    "capture.unavailable": "La captura no está disponible: {reason}",
    "field.cliente": "Código de cliente",
    "field.unidad_negocio": "Unidad de negocio",
    "field.tipos": "Tipo",
    "field.regiones": "Región",
    "field.territorios": "Territorio",
    "field.industrias": "Industria",
    "field.numero_vendedor": "Vendedor",
    "field.acv": "ACV",
    "field.contract_years": "Años",
    "field.tcv": "TCV",
    "field.margen_ganancia": "Margen de ganancia (0 a 1)",
    "field.fecha_cierre_oportunidad": "Fecha de cierre",
    "field.fecha_cierre_planificada": "Fecha de cierre planificada (al capturar)",
    "field.fecha_creacion_oportunidad": "Fecha de creación",
    "field.lead_source": "Origen del lead",
    "field.etapas": "Etapa",
    "field.edad_oferta": "Edad de la oferta (días)",
    "field.numero_opportunidad": "Número de oportunidad",
    "field.body": "Formulario",
    "detail.title": "Oportunidad {number}",
    "detail.saved": "Oportunidad guardada con el número {number}.",
    "detail.closed_won": "Ganada",
    "detail.closed_lost": "Perdida",
    "detail.closed_note": "Oportunidad cerrada: se muestra su resultado, no una predicción.",
    "detail.likely_won": "Probablemente ganada",
    "detail.likely_lost": "Probablemente perdida",
    "detail.probability": "Probabilidad de ganar",
    "detail.score": "Puntaje",
    "detail.grade": "Grado",
    "detail.for": "A favor",
    "detail.against": "En contra",
    "detail.none": "Ninguno destacado",
    "detail.source.cache": "Predicción leída de la caché (Redis).",
    "detail.source.model": "Predicción calculada ahora con el modelo actual.",
    "detail.model": "Modelo {version}",
    "detail.no_prediction": "Aún no hay predicción: {reason}",
    "detail.data": "Datos",
    "detail.change": "Cambiar la etapa",
    "detail.change_hint": "Ganada o Perdida la cierra: la fecha de cierre pasa a ser hoy y ya no se puede cambiar.",
    "detail.change_submit": "Guardar la etapa",
    "detail.changed": "Etapa cambiada a {stage}.",
    "change.closed": "La oportunidad está cerrada ({stage}); una oportunidad cerrada no se puede cambiar.",
    "change.conflict": "Otra persona cambió la oportunidad mientras tanto. Vuelva a cargarla e intente de nuevo.",
    "change.custom_schema": ("Los datos cargados siguen otro esquema; aquí solo se cambian oportunidades con la "
                             "forma original."),
    "stage.S1": "S1", "stage.S2": "S2", "stage.S3": "S3", "stage.S4": "S4", "stage.S5": "S5", "stage.S6": "S6",
    "stage.Won": "Ganada",
    "stage.Lost": "Perdida",
    "list.title": "Oportunidades",
    "list.lookup": "Validar una oportunidad",
    "list.lookup_submit": "Ver",
    "list.empty": "Todavía no hay oportunidades.",
    "list.more": "Ver más",
    "error.not_found": "No existe esa oportunidad o no tiene acceso a ella.",
    "error.unavailable": ("El servicio no está disponible en este momento ({service}). Intente de nuevo en unos "
                          "segundos; no se guardó nada."),
    "error.csrf": "El formulario caducó. Vuelva a cargar la página e intente de nuevo.",
    "error.title": "Error",
    "error.back": "Volver",
    "role.manager": "Gerente: ve a su equipo ({n} vendedores)",
    "role.seller": "Vendedor: ve sus propias oportunidades",
    # field-level validation messages
    "err.missing": "Obligatorio.",
    "err.extra": "Campo desconocido.",
    "err.form_token": "Este formulario caducó o no es de esta sesión. Revise los datos y envíelo de nuevo.",
    "err.form_reused": "Este formulario ya se envió con otros datos. Revise los datos y envíelo de nuevo.",
    "err.form_pending": "Este formulario se está guardando. Vea sus oportunidades en unos segundos.",
    "err.operator_key": "Los nombres de campo no pueden empezar con '$' ni contener '.'.",
    "err.string_type": "Debe ser texto.",
    "err.float_type": "Debe ser un número.",
    "err.int_type": "Debe ser un número entero.",
    "err.finite_number": "Debe ser un número finito.",
    "err.ge": "Debe ser mayor o igual que {ge}.",
    "err.le": "Debe ser menor o igual que {le}.",
    "err.too_long": "Como máximo {max_length} caracteres.",
    "err.date_type": "Debe ser una fecha AAAA-MM-DD.",
    "err.client_pattern": "Debe ser CL- seguido de dígitos, por ejemplo CL-00042.",
    "err.code_unknown": "Código desconocido; elija uno de {first} … {last}.",
    "err.date_past": "Debe ser hoy ({today}) o una fecha posterior.",
    "err.date_too_far": "Debe ser a más tardar {latest}.",
    "err.tcv_below_acv": "El TCV (todo el contrato) debe ser mayor o igual que el ACV (un año).",
    "err.tcv_missing": "Obligatorio (o indique los años para calcularlo como ACV × años).",
    "err.stage_unknown": "Etapa desconocida; elija una de {stages}.",
    "err.close_date_on_close": "Al cerrarse, la fecha de cierre es el día de hoy (la fija el servidor).",
    "err.body": "El cuerpo debe ser un objeto JSON con los campos de la oportunidad.",
    "err.json_invalid": "El cuerpo no es JSON válido.",
    "err.other": "Valor no válido.",
    # features named in the reasons
    "feature.age_days": "días abierta hasta ahora",
    "feature.created_month": "mes de creación",
    "feature.client_prior_opportunities": "oportunidades anteriores del cliente",
    "feature.client_prior_units": "unidades de negocio del cliente hasta ahora",
    "feature.client_tenure_days": "días desde la primera oportunidad del cliente",
    "feature.amount_vs_client": "importe frente a lo habitual del cliente",
    "feature.client_closed_before": "oportunidades cerradas del cliente",
    "feature.client_won_before": "oportunidades ganadas del cliente",
    "feature.client_win_rate": "tasa de éxito del cliente",
}

_EN: dict[str, str] = {
    "app.title": "Sales prediction",
    "nav.capture": "New opportunity",
    "nav.list": "My opportunities",
    "nav.team": "Team opportunities",
    "nav.dashboard": "Sales dashboard",
    "nav.logout": "Log out",
    "nav.language": "Language",
    "login.title": "Log in",
    "login.username": "Username",
    "login.password": "Password",
    "login.submit": "Log in",
    "login.wrong": "Wrong username or password.",
    "login.limited": "Too many failed attempts. Try again in {seconds} s.",
    "login.required": "Log in to continue.",
    "capture.title": "Enter the details",
    "capture.submit": "Save and predict",
    "capture.choose": "Choose…",
    "capture.errors": "Check the marked fields.",
    "capture.years_hint": "Leave TCV empty to compute it as ACV × years.",
    "capture.tcv_hint": "Total contract value; at least the ACV.",
    "capture.unavailable": "Capture is unavailable: {reason}",
    "field.cliente": "Client code",
    "field.unidad_negocio": "Business unit",
    "field.tipos": "Type",
    "field.regiones": "Region",
    "field.territorios": "Territory",
    "field.industrias": "Industry",
    "field.numero_vendedor": "Seller",
    "field.acv": "ACV",
    "field.contract_years": "Years",
    "field.tcv": "TCV",
    "field.margen_ganancia": "Profit margin (0 to 1)",
    "field.fecha_cierre_oportunidad": "Close date",
    "field.fecha_cierre_planificada": "Planned close date (at capture)",
    "field.fecha_creacion_oportunidad": "Created on",
    "field.lead_source": "Lead source",
    "field.etapas": "Stage",
    "field.edad_oferta": "Offer age (days)",
    "field.numero_opportunidad": "Opportunity number",
    "field.body": "Form",
    "detail.title": "Opportunity {number}",
    "detail.saved": "Opportunity saved as number {number}.",
    "detail.closed_won": "Won",
    "detail.closed_lost": "Lost",
    "detail.closed_note": "Closed opportunity: its outcome is shown, not a prediction.",
    "detail.likely_won": "Likely won",
    "detail.likely_lost": "Likely lost",
    "detail.probability": "Probability of winning",
    "detail.score": "Score",
    "detail.grade": "Grade",
    "detail.for": "For",
    "detail.against": "Against",
    "detail.none": "None stands out",
    "detail.source.cache": "Prediction read from the cache (Redis).",
    "detail.source.model": "Prediction computed now with the current model.",
    "detail.model": "Model {version}",
    "detail.no_prediction": "No prediction yet: {reason}",
    "detail.data": "Details",
    "detail.change": "Change the stage",
    "detail.change_hint": "Won or Lost closes it: its close date becomes today and it can no longer be changed.",
    "detail.change_submit": "Save the stage",
    "detail.changed": "Stage changed to {stage}.",
    "change.closed": "The opportunity is closed ({stage}); a closed opportunity cannot be changed.",
    "change.conflict": "Someone else changed the opportunity meanwhile. Reload it and try again.",
    "change.custom_schema": ("The loaded data follows another schema; only opportunities of the original shape "
                             "change here."),
    "stage.S1": "S1", "stage.S2": "S2", "stage.S3": "S3", "stage.S4": "S4", "stage.S5": "S5", "stage.S6": "S6",
    "stage.Won": "Won",
    "stage.Lost": "Lost",
    "list.title": "Opportunities",
    "list.lookup": "Validate an opportunity",
    "list.lookup_submit": "Show",
    "list.empty": "No opportunities yet.",
    "list.more": "Show more",
    "error.not_found": "That opportunity does not exist or you have no access to it.",
    "error.unavailable": ("The service is unavailable right now ({service}). Try again in a few seconds; nothing "
                          "was saved."),
    "error.csrf": "The form expired. Reload the page and try again.",
    "error.title": "Error",
    "error.back": "Back",
    "role.manager": "Manager: sees the team ({n} sellers)",
    "role.seller": "Seller: sees own opportunities",
    "err.missing": "Required.",
    "err.extra": "Unknown field.",
    "err.form_token": "This form has expired or is not from this session. Check the values and send it again.",
    "err.form_reused": "This form was already sent with other values. Check the values and send it again.",
    "err.form_pending": "This form is being saved. See your opportunities in a few seconds.",
    "err.operator_key": "Field names may not start with '$' or contain '.'.",
    "err.string_type": "Must be text.",
    "err.float_type": "Must be a number.",
    "err.int_type": "Must be a whole number.",
    "err.finite_number": "Must be a finite number.",
    "err.ge": "Must be greater than or equal to {ge}.",
    "err.le": "Must be less than or equal to {le}.",
    "err.too_long": "At most {max_length} characters.",
    "err.date_type": "Must be a date YYYY-MM-DD.",
    "err.client_pattern": "Must be CL- followed by digits, e.g. CL-00042.",
    "err.code_unknown": "Unknown code; choose one of {first} … {last}.",
    "err.date_past": "Must be today ({today}) or later.",
    "err.date_too_far": "Must be {latest} at the latest.",
    "err.tcv_below_acv": "TCV (the whole contract) must be greater than or equal to ACV (one year).",
    "err.tcv_missing": "Required (or give the years to compute it as ACV × years).",
    "err.stage_unknown": "Unknown stage; choose one of {stages}.",
    "err.close_date_on_close": "When it closes, its close date is today (set by the server).",
    "err.body": "The body must be a JSON object with the opportunity's fields.",
    "err.json_invalid": "The body is not valid JSON.",
    "err.other": "Invalid value.",
}

CATALOGS = {"es": _ES, "en": _EN}


def pick(value: str | None) -> str:
    """A supported language code, or the default."""
    return value if value in CATALOGS else DEFAULT


def translate(lang: str, key: str, **params: Any) -> str:
    """The text for ``key`` in ``lang`` (English, then the key itself, as fallbacks), formatted."""
    text = CATALOGS[pick(lang)].get(key) or _EN.get(key) or key
    if params:
        try:
            return text.format(**params)
        except (KeyError, IndexError, ValueError):
            return text
    return text


def feature_label(lang: str, feature: str, english: str) -> str:
    """A reason's feature in the page's language: a form field's label, a derived feature's, or as given."""
    for key in (f"field.{feature}", f"feature.{feature}"):
        if key in CATALOGS[pick(lang)]:
            return CATALOGS[pick(lang)][key]
    return english


class Translator:
    """Bound to one language; templates call it as ``t('key', name=value)``."""

    def __init__(self, lang: str) -> None:
        self.lang = pick(lang)

    def __call__(self, key: str, **params: Any) -> str:
        return translate(self.lang, key, **params)
