"""Vendor metadata of TIFF slides: Aperio description, Philips XML, OME XML, TIFF resolution tags."""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree

_UM_PER_UNIT = {2: 25400.0, 3: 10000.0}  # ResolutionUnit inch, centimetre -> micrometres


#: channel names of 1-4 samples per pixel (others are named by index)
SAMPLE_NAMES = {1: ["I"], 2: ["I", "A"], 3: ["R", "G", "B"], 4: ["R", "G", "B", "A"]}


def parse_aperio(description: str) -> dict[str, str]:
    """Aperio ImageDescription ``header|key = value|...`` as a dict (values kept as strings, like cuCIM)."""
    parts = description.split("|")
    meta = {"Header": parts[0].strip()}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            meta[key.strip()] = value.strip()
    return meta


def parse_philips(xml: str) -> dict[str, Any]:
    """Top-level attributes of a Philips DPUfsImport XML, plus per-level pixel spacing (mm) in a list."""
    meta: dict[str, Any] = {}
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return meta
    for attr in root.findall("./Attribute"):
        name = attr.get("Name")
        if name and attr.text is not None:
            meta[name] = attr.text.strip().strip('"')
    spacings = []
    for elem in root.iterfind(
        ".//DataObject[@ObjectType='PixelDataRepresentation']/Attribute[@Name='DICOM_PIXEL_SPACING']"
    ):
        if elem.text:
            try:
                spacings.append([float(v) for v in elem.text.replace('"', " ").split()])
            except ValueError:
                continue
    if spacings:
        meta["PixelSpacing"] = spacings
    return meta


def parse_ome(xml: str) -> dict[str, Any]:
    """The first image's Pixels attributes and channel names from OME XML."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return {}
    pixels = None
    channels: list[str] = []
    for elem in root.iter():
        if elem.tag.endswith("}Pixels") or elem.tag == "Pixels":
            pixels = elem
            break
    if pixels is None:
        return {}
    meta: dict[str, Any] = dict(pixels.attrib)
    for child in pixels:
        if child.tag.endswith("Channel"):
            name = child.get("Name")
            if name:
                channels.append(name)
    if channels:
        meta["ChannelNames"] = channels
    return meta


def um_from_ome(meta: dict[str, Any], axis: str) -> float | None:
    """Physical size of one pixel along ``axis`` ("X"/"Y"/"Z") in micrometres, from OME Pixels attributes."""
    value = meta.get(f"PhysicalSize{axis}")
    if value is None:
        return None
    scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}.get(
        meta.get(f"PhysicalSize{axis}Unit", "µm"), None
    )
    try:
        return float(value) * scale if scale is not None else None
    except ValueError:
        return None


def um_from_resolution(page) -> tuple[float, float] | None:
    """(y, x) micrometres per pixel from XResolution/YResolution/ResolutionUnit, or None when not physical."""
    unit = page.tags.valueof(296, 2)
    scale = _UM_PER_UNIT.get(int(unit))
    xres, yres = page.tags.valueof(282), page.tags.valueof(283)
    if scale is None or xres is None or yres is None:
        return None
    try:
        x = xres[0] / xres[1] if isinstance(xres, tuple) else float(xres)
        y = yres[0] / yres[1] if isinstance(yres, tuple) else float(yres)
    except (ZeroDivisionError, TypeError, IndexError):
        return None
    if x <= 0 or y <= 0:
        return None
    return scale / y, scale / x


def tiff_section(page) -> dict[str, Any]:
    """cuCIM's "tiff" metadata section."""
    def ratio(v):
        if isinstance(v, tuple) and len(v) == 2 and v[1]:
            return v[0] / v[1]
        return 1.0 if v is None else float(v) if not isinstance(v, tuple) else 1.0

    unit = page.tags.valueof(296)
    return {
        "model": str(page.tags.valueof(272, "")),
        "resolution_unit": {1: "", 2: "inch", 3: "centimeter"}.get(int(unit), "") if unit is not None else "",
        "software": str(page.tags.valueof(305, "")),
        "x_resolution": ratio(page.tags.valueof(282)),
        "y_resolution": ratio(page.tags.valueof(283)),
    }


# ImageJ "unit" values -> micrometres per unit
_IMAGEJ_UNITS = {
    "um": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0, "\\u00b5m": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "m": 1e6,
    "meter": 1e6, "inch": 25400.0,
}


def imagej_section(meta: dict[str, Any] | None) -> dict[str, Any]:
    """The scalar entries of tifffile's ``imagej_metadata`` (LUTs, ranges and other arrays left out)."""
    return {str(k): v for k, v in (meta or {}).items() if isinstance(v, (str, int, float, bool))}


def imagej_spacing(meta: dict[str, Any] | None, page) -> tuple[float | None, float | None, float | None]:
    """(z, y, x) micrometres per voxel of an ImageJ hyperstack: ``spacing`` (z) and X/YResolution (pixels per
    ``unit``; per inch or centimetre when ResolutionUnit says so); None for what is unknown or not physical."""
    meta = meta or {}
    scale = _IMAGEJ_UNITS.get(str(meta.get("unit", "")).strip().lower())
    z = None
    try:
        spacing = float(meta["spacing"])
        if scale is not None and spacing > 0:
            z = spacing * scale
    except (KeyError, TypeError, ValueError):
        pass
    yx = um_from_resolution(page)
    if yx is None and scale is not None:
        xres, yres = page.tags.valueof(282), page.tags.valueof(283)
        try:
            x = xres[0] / xres[1] if isinstance(xres, tuple) else float(xres)
            y = yres[0] / yres[1] if isinstance(yres, tuple) else float(yres)
            if x > 0 and y > 0:
                yx = (scale / y, scale / x)
        except (ZeroDivisionError, TypeError, IndexError, ValueError):
            yx = None
    return (z, *(yx if yx is not None else (None, None)))
