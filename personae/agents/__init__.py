"""Role-playing agents: persona + prompt rendering + sampling, registered by role name.

Shipped roles: `counselor` (CBT, motivational interviewing, integrative) and `client`
(PATIENT-Ψ cognitive model with six conversation styles); `teacher` and `student` for the
teacher-student experiments. Add roles with `@register_role`.
"""

from personae.agents._base import Agent, Sampling, Utterance
from personae.agents._counseling import Client, Counselor
from personae.agents._personas import (
    STYLE_BEHAVIOUR,
    STYLE_SENTENCE_CAP,
    ClientProfile,
    ConversationStyle,
    CoreBeliefs,
    CounselorPersona,
)
from personae.agents._registry import get_role, register_role, role_names
from personae.agents._teaching import Shot, Student, StudentPersona, Teacher, TeacherPersona

__all__ = [
    "STYLE_BEHAVIOUR",
    "STYLE_SENTENCE_CAP",
    "Agent",
    "Client",
    "ClientProfile",
    "ConversationStyle",
    "CoreBeliefs",
    "Counselor",
    "CounselorPersona",
    "Sampling",
    "Shot",
    "Student",
    "StudentPersona",
    "Teacher",
    "TeacherPersona",
    "Utterance",
    "get_role",
    "register_role",
    "role_names",
]
