"""Procedural NYU-Depth-V2-style indoor scenes, rendered by a vectorised numpy ray caster.

Each sample is a box-shaped room seen by a pinhole camera, with one main object on the
floor whose category is the image label, plus a few distractor objects. Five categories
differ by shape (visible in depth) and each has a typical, muted colour family, as a
real object category has a typical appearance; five are the same cabinet shape told
apart only by saturated colour and texture (visible only in RGB). So an RGB teacher
recognises every class from its own evidence, a depth student can learn the five shape
classes from it (the transferable knowledge), and the cabinets' identities stay
invisible to depth (the knowledge that cannot transfer).

Usage: ``render_scene(np.random.default_rng([seed, index]), size=64)``.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from crossmodal.data.synthetic.geometry import (intersect_boxes, intersect_cone, intersect_cylinder, intersect_room,
                                               intersect_sphere, yaw_matrix)
from crossmodal.data.synthetic.sensor import sensor_depth

CLASS_NAMES: tuple[str, ...] = (
    "box", "ball", "barrel", "table", "cone",
    "red_cabinet", "green_striped_cabinet", "blue_checked_cabinet",
    "yellow_dotted_cabinet", "purple_gradient_cabinet",
)
SEG_CLASS_NAMES: tuple[str, ...] = ("floor", "wall", "ceiling") + CLASS_NAMES
IGNORE_INDEX = 255
MAX_DEPTH_M = 10.0

SEG_FLOOR, SEG_WALL, SEG_CEILING = 0, 1, 2
SEG_OBJECT_OFFSET = 3
NUM_SHAPE_CLASSES = 5
_ROOM_SURFACE = -1

# The shape classes' typical hues (muted: saturation 0.25..0.5), jittered per object.
_SHAPE_HUES = (0.08, 0.52, 0.95, 0.3, 0.7)
# Appearance classes: (hue, pattern); the accent colour is chosen per pattern below.
_APPEARANCE = {
    5: (0.0, "plain"), 6: (0.33, "stripes"), 7: (0.62, "checker"),
    8: (0.14, "dots"), 9: (0.80, "gradient"),
}


@dataclass
class Material:
    """Procedural surface texture evaluated at a hit point in the surface's own frame."""
    pattern: str
    color: np.ndarray   # (3,) main albedo in 0..1
    accent: np.ndarray  # (3,) second albedo for two-tone patterns
    period: float       # pattern period in metres


@dataclass
class SceneObject:
    """An object standing on the floor; its geometry is given in its own (yawed) frame."""
    category: int
    position: np.ndarray  # (3,) floor point below the object's centre
    yaw: float
    shape: str            # 'boxes' | 'sphere' | 'cylinder' | 'cone'
    size: np.ndarray      # boxes: (K, 2, 3) low/high corners; others: (radius, height)
    material: Material
    radius: float         # footprint radius, used for placement and contact shadows
    height: float


@dataclass
class Scene:
    room_low: np.ndarray
    room_high: np.ndarray
    camera_position: np.ndarray
    camera_axes: np.ndarray  # rows: right, up, forward (unit vectors)
    tan_half_fov: float
    objects: list[SceneObject]
    room_materials: dict[int, Material]  # keyed by floor / wall / ceiling seg id
    light_direction: np.ndarray | None   # directional light, pointing towards the light
    light_position: np.ndarray | None    # point light
    light_intensity: float
    ambient: float
    tint: np.ndarray


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value))


def _object_material(rng: np.random.Generator, category: int) -> Material:
    if category < NUM_SHAPE_CLASSES:
        color = _hsv(_SHAPE_HUES[category] + rng.uniform(-0.04, 0.04), rng.uniform(0.25, 0.5),
                     rng.uniform(0.4, 0.8))
        pattern = "wood" if rng.random() < 0.5 else "plain"
        return Material(pattern, color, color * rng.uniform(0.55, 0.75), rng.uniform(0.04, 0.09))
    hue, pattern = _APPEARANCE[category]
    hue += rng.uniform(-0.025, 0.025)
    color = _hsv(hue, rng.uniform(0.7, 0.95), rng.uniform(0.6, 0.9))
    if pattern == "dots":
        accent = _hsv(hue, 0.6, rng.uniform(0.15, 0.3))
    elif pattern == "gradient":
        accent = _hsv(hue + 0.06, rng.uniform(0.25, 0.45), rng.uniform(0.85, 1.0))
    else:
        accent = np.full(3, rng.uniform(0.85, 0.95))
    return Material(pattern, color, accent, rng.uniform(0.08, 0.16))


def _sample_object(rng: np.random.Generator, category: int, scale: float) -> SceneObject:
    """Random size and material for one object of the given category (position set later)."""
    uniform = rng.uniform
    if category == 0:  # crate: near-cube
        side = uniform(0.4, 0.75) * scale
        half = side * uniform(0.9, 1.1, 3) / 2
        shape, size = "boxes", np.array([[[-half[0], 0, -half[2]], [half[0], 2 * half[1], half[2]]]])
    elif category == 1:
        radius = uniform(0.2, 0.4) * scale
        shape, size = "sphere", np.array([radius, 2 * radius])
    elif category == 2:
        shape, size = "cylinder", np.array([uniform(0.2, 0.32), uniform(0.6, 1.0)]) * scale
    elif category == 3:  # table: top slab + 4 legs
        width, depth = uniform(0.8, 1.3) * scale / 2, uniform(0.6, 0.9) * scale / 2
        height, thickness, leg = uniform(0.6, 0.8) * scale, 0.05 * scale, uniform(0.03, 0.04) * scale
        boxes = [[[-width, height - thickness, -depth], [width, height, depth]]]
        for sign_x, sign_z in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
            leg_x, leg_z = sign_x * (width - 2 * leg), sign_z * (depth - 2 * leg)
            boxes.append([[leg_x - leg, 0, leg_z - leg], [leg_x + leg, height - thickness, leg_z + leg]])
        shape, size = "boxes", np.array(boxes)
    elif category == 4:
        shape, size = "cone", np.array([uniform(0.25, 0.4), uniform(0.6, 1.1)]) * scale
    else:  # the five appearance classes share one cabinet size distribution
        half_width, half_depth = uniform(0.25, 0.4) * scale, uniform(0.2, 0.3) * scale
        height = uniform(1.0, 1.5) * scale
        shape, size = "boxes", np.array([[[-half_width, 0, -half_depth], [half_width, height, half_depth]]])
    if shape == "boxes":
        radius, height = float(np.hypot(size[:, :, 0], size[:, :, 2]).max()), float(size[:, 1, 1].max())
    else:
        radius, height = float(size[0]), float(size[1])
    return SceneObject(category, np.zeros(3), float(uniform(0, 2 * np.pi)), shape, size,
                       _object_material(rng, category), radius, height)


def _room_materials(rng: np.random.Generator) -> dict[int, Material]:
    floor_kind = ("tiles", "planks", "plain")[rng.integers(3)]
    if floor_kind == "planks":
        floor_color = _hsv(rng.uniform(0.05, 0.1), rng.uniform(0.4, 0.65), rng.uniform(0.35, 0.7))
    else:
        floor_color = _hsv(rng.uniform(0, 1), rng.uniform(0, 0.25), rng.uniform(0.35, 0.85))
    floor = Material(floor_kind, floor_color, floor_color * rng.uniform(0.5, 0.8),
                     rng.uniform(0.15, 0.3) if floor_kind == "planks" else rng.uniform(0.3, 0.6))
    wall_color = _hsv(rng.uniform(0, 1), rng.uniform(0, 0.3), rng.uniform(0.6, 0.95))
    wall = Material("wallpaper" if rng.random() < 0.3 else "plain", wall_color,
                    wall_color * rng.uniform(0.88, 0.95), rng.uniform(0.1, 0.3))
    ceiling_color = np.full(3, rng.uniform(0.8, 0.95))
    return {SEG_FLOOR: floor, SEG_WALL: wall,
            SEG_CEILING: Material("plain", ceiling_color, ceiling_color, 1.0)}


def _occludes(position: np.ndarray, radius: float, camera: np.ndarray, main: SceneObject) -> bool:
    """Whether an object at `position` would stand between the camera and the main object."""
    to_main = main.position[[0, 2]] - camera[[0, 2]]
    distance = np.linalg.norm(to_main)
    offset = position[[0, 2]] - camera[[0, 2]]
    along = offset @ to_main / distance
    lateral = abs(offset[0] * to_main[1] - offset[1] * to_main[0]) / distance
    return bool(along < distance and lateral < radius + 0.8 * main.radius)


def _sample_scene(rng: np.random.Generator) -> Scene:
    """Room, camera aimed at the main object, distractors, lighting."""
    label = int(rng.integers(len(CLASS_NAMES)))
    main = _sample_object(rng, label, scale=1.0)
    half_width = rng.uniform(3.0, 6.0) / 2
    camera = np.array([rng.uniform(-0.25, 0.25) * half_width, rng.uniform(1.0, 1.7), rng.uniform(0.15, 0.5)])
    room_depth = max(rng.uniform(3.0, 6.0), camera[2] + 1.8 + main.radius + 0.3)
    room_low = np.array([-half_width, 0.0, 0.0])
    room_high = np.array([half_width, rng.uniform(2.4, 3.2), room_depth])

    distance = rng.uniform(1.8, max(1.8, min(4.0, room_depth - camera[2] - main.radius - 0.1)))
    bearing = rng.uniform(-0.25, 0.25)
    x_limit = half_width - main.radius - 0.05
    main.position = np.array([np.clip(camera[0] + distance * np.sin(bearing), -x_limit, x_limit), 0.0,
                              camera[2] + distance * np.cos(bearing)])
    to_main = main.position - camera
    yaw = np.arctan2(to_main[0], to_main[2]) + rng.uniform(-0.07, 0.07)
    pitch = np.arctan2(camera[1] - main.height * rng.uniform(0.35, 0.65),
                       np.hypot(to_main[0], to_main[2])) + rng.uniform(-0.05, 0.05)
    forward = np.array([np.sin(yaw) * np.cos(pitch), -np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
    right = np.array([np.cos(yaw), 0.0, -np.sin(yaw)])
    up = np.cross(forward, right)

    objects = [main]
    for _ in range(rng.integers(1, 4)):
        distractor = _sample_object(rng, int(rng.integers(len(CLASS_NAMES))), rng.uniform(0.5, 0.8))
        radius = distractor.radius
        for _attempt in range(10):
            position = np.array([rng.uniform(-half_width + radius, half_width - radius), 0.0,
                                 rng.uniform(camera[2] + 1.0, room_depth - radius - 0.05)])
            apart = all(np.linalg.norm(position - other.position) > radius + other.radius + 0.1
                        for other in objects)
            if apart and not _occludes(position, radius, camera, main):
                distractor.position = position
                objects.append(distractor)
                break

    if rng.random() < 0.5:
        light_direction = np.array([rng.uniform(-1, 1), rng.uniform(0.6, 1.5), rng.uniform(-1, 0.5)])
        light_direction /= np.linalg.norm(light_direction)
        light_position = None
    else:
        light_direction = None
        light_position = np.array([rng.uniform(-half_width, half_width) * 0.8, room_high[1] - 0.1,
                                   rng.uniform(0.2, 0.9) * room_depth])
    return Scene(room_low, room_high, camera, np.stack([right, up, forward]),
                 float(np.tan(np.radians(rng.uniform(50, 60)) / 2)), objects, _room_materials(rng),
                 light_direction, light_position, rng.uniform(0.55, 0.9), rng.uniform(0.2, 0.4),
                 1.0 + rng.uniform(-0.12, 0.12, 3))


@lru_cache(maxsize=8)
def _image_plane(size: int) -> np.ndarray:
    """(S*S, 2) pixel-centre coordinates in [-1, 1], x right and y up, row-major from the top."""
    coordinates = (np.arange(size) + 0.5) / size * 2 - 1
    plane = np.stack([np.tile(coordinates, size), -np.repeat(coordinates, size)], axis=1)
    plane.flags.writeable = False
    return plane


def _intersect_object(obj: SceneObject, origin: np.ndarray, directions: np.ndarray):
    if obj.shape == "boxes":
        return intersect_boxes(origin, directions, obj.size[:, 0], obj.size[:, 1])
    radius, height = obj.size
    if obj.shape == "sphere":
        return intersect_sphere(origin, directions, np.array([0.0, radius, 0.0]), radius)
    if obj.shape == "cylinder":
        return intersect_cylinder(origin, directions, radius, height)
    return intersect_cone(origin, directions, radius, height)


def _cast(scene: Scene, directions: np.ndarray):
    """Nearest hit per ray: z-depth, world normal, surface index (-1 = room) and seg id."""
    depth, normal, axis = intersect_room(scene.camera_position, directions, scene.room_low, scene.room_high)
    seg = np.where(axis == 1, np.where(directions[:, 1] < 0, SEG_FLOOR, SEG_CEILING), SEG_WALL)
    surface = np.full(len(directions), _ROOM_SURFACE)
    for index, obj in enumerate(scene.objects):
        rotation = yaw_matrix(obj.yaw)
        t, local_normal = _intersect_object(obj, (scene.camera_position - obj.position) @ rotation,
                                            directions @ rotation)
        closer = t < depth
        if closer.any():
            depth = np.where(closer, t, depth)
            normal[closer] = local_normal[closer] @ rotation.T
            seg[closer] = SEG_OBJECT_OFFSET + obj.category
            surface[closer] = index
    return depth, normal, surface, seg


def _hash(cells: np.ndarray) -> np.ndarray:
    """Deterministic per-cell pseudo-random value in [0, 1) from integer cell coordinates."""
    return np.modf(np.abs(np.sin(cells @ np.array([12.9898, 78.233, 37.719])[: cells.shape[1]]) * 43758.5453))[0]


def _albedo(material: Material, points: np.ndarray, normals: np.ndarray, height: float) -> np.ndarray:
    """Texture colour at local hit points; (u, v) lie in the face most aligned with the normal."""
    axis = np.abs(normals).argmax(axis=1)
    u = np.where(axis == 0, points[:, 2], points[:, 0])
    v = np.where(axis == 1, points[:, 2], points[:, 1])
    su, sv = u / material.period, v / material.period
    pattern = material.pattern
    if pattern == "plain":
        mix = 0.08 * _hash(np.floor(points / 0.02))
    elif pattern == "wood":
        mix = 0.35 + 0.35 * np.sin(2 * np.pi * (su + 0.3 * np.sin(sv * 1.3)))
    elif pattern == "stripes":
        mix = (np.modf(np.abs(sv))[0] < 0.5).astype(float)
    elif pattern == "checker":
        mix = ((np.floor(su) + np.floor(sv)) % 2).astype(float)
    elif pattern == "dots":
        mix = (((su - np.floor(su) - 0.5) ** 2 + (sv - np.floor(sv) - 0.5) ** 2) < 0.09).astype(float)
    elif pattern == "gradient":
        mix = np.clip(points[:, 1] / height, 0.0, 1.0)
    elif pattern == "tiles":
        grout = np.minimum(su - np.floor(su), sv - np.floor(sv)) < 0.04
        mix = np.where(grout, 1.0, 0.25 * _hash(np.floor(np.stack([su, sv], 1))))
    elif pattern == "planks":
        seam = (su - np.floor(su)) < 0.03
        grain = 0.1 * np.sin(2 * np.pi * (sv * 4 + 0.5 * np.sin(su * 9)))
        mix = np.where(seam, 1.0, 0.45 * _hash(np.floor(np.stack([su, su], 1))) + grain + 0.1)
    else:  # wallpaper: faint vertical stripes
        mix = 0.5 + 0.5 * np.sin(2 * np.pi * su)
    mix = mix[:, None]
    return material.color * (1 - mix) + material.accent * mix


def _shade(scene: Scene, directions: np.ndarray, depth: np.ndarray, normal: np.ndarray,
           surface: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Textured Lambertian shading with ambient term, blob contact shadows and a colour tint."""
    points = scene.camera_position + depth[:, None] * directions
    albedo = np.empty_like(points)
    for seg_id, material in scene.room_materials.items():
        mask = (surface == _ROOM_SURFACE) & (seg == seg_id)
        albedo[mask] = _albedo(material, points[mask], normal[mask], scene.room_high[1])
    for index, obj in enumerate(scene.objects):
        mask = surface == index
        if mask.any():
            rotation = yaw_matrix(obj.yaw)
            albedo[mask] = _albedo(obj.material, (points[mask] - obj.position) @ rotation,
                                   normal[mask] @ rotation, obj.height)
    if scene.light_direction is not None:
        to_light = scene.light_direction
        lambert = np.maximum(normal @ to_light, 0.0)
        shadow_shift = -to_light[[0, 2]] / to_light[1]
    else:
        to_light = scene.light_position - points
        distance = np.linalg.norm(to_light, axis=1)
        lambert = np.maximum(np.einsum("ij,ij->i", normal, to_light) / distance, 0.0)
        lambert *= 2.0 / (1.0 + 0.15 * distance ** 2)
        shadow_shift = None
    floor = (surface == _ROOM_SURFACE) & (seg == SEG_FLOOR)
    floor_xz = points[floor][:, [0, 2]]
    for obj in scene.objects:
        center = obj.position[[0, 2]]
        if shadow_shift is not None:
            center = center + shadow_shift * obj.height * 0.4
        distance_to_object = np.linalg.norm(floor_xz - center, axis=1)
        lambert[floor] *= 0.4 + 0.6 * np.clip((distance_to_object - 0.7 * obj.radius) / (0.6 * obj.radius), 0, 1)
    shading = scene.ambient + scene.light_intensity * lambert
    return np.clip(albedo * shading[:, None] * scene.tint, 0.0, 1.0)


def render_scene(rng: np.random.Generator, size: int = 64, noise: bool = True) -> dict[str, np.ndarray]:
    """Render one random scene.

    Returns {'rgb': (S,S,3) uint8, 'depth': (S,S) float32 clean z-depth in metres,
    'raw_depth': (S,S) float32 with sensor noise and 0.0 at holes (== depth when noise=False),
    'seg': (S,S) uint8 in 0..12, 'label': int in 0..9}. The scene depends only on the rng state;
    noise draws come last, so noise=False renders the same scene as noise=True.
    """
    scene = _sample_scene(rng)
    plane = _image_plane(size) * scene.tan_half_fov
    right, up, forward = scene.camera_axes
    # Unit forward component makes the ray parameter t equal to the z-depth.
    directions = plane[:, :1] * right + plane[:, 1:] * up + forward
    depth, normal, surface, seg = _cast(scene, directions)
    rgb = _shade(scene, directions, depth, normal, surface, seg)
    depth_image = np.minimum(depth, MAX_DEPTH_M - 1e-3).astype(np.float32).reshape(size, size)
    if noise:
        cos_incidence = np.abs(np.einsum("ij,ij->i", normal, directions)) / np.linalg.norm(directions, axis=1)
        raw_depth = sensor_depth(rng, depth_image, cos_incidence.reshape(size, size),
                                 surface.reshape(size, size), MAX_DEPTH_M)
    else:
        raw_depth = depth_image.copy()
    return {
        "rgb": (rgb * 255 + 0.5).astype(np.uint8).reshape(size, size, 3),
        "depth": depth_image,
        "raw_depth": raw_depth,
        "seg": seg.astype(np.uint8).reshape(size, size),
        "label": int(scene.objects[0].category),
    }
