"""Role-playing agents: persona + prompt rendering + sampling, registered by role name.

Shipped roles: `persona` (a character described in YAML: name, description, goals, private
notes, speaking style, any extra fields), `counselor` (CBT, motivational interviewing,
integrative) and `client` (PATIENT-Ψ cognitive model with six conversation styles); `teacher`
and `student` for the teacher-student experiments; `computer_user` for computer-use agents (the
`judge` roles live in `personae.judges`). Add roles with `@register_role`.
"""

from personae.agents._base import (
    Agent,
    LineKind,
    Sampling,
    Utterance,
    default_label,
    visible_history,
)
from personae.agents._computer import ComputerUser, ComputerUserPersona
from personae.agents._counseling import Client, Counselor
from personae.agents._discussion import (
    Facilitator,
    FacilitatorPersona,
    Participant,
    ParticipantPersona,
)
from personae.agents._generic import Persona, PersonaAgent
from personae.agents._personas import (
    STYLE_BEHAVIOUR,
    STYLE_SENTENCE_CAP,
    ClientProfile,
    ConversationStyle,
    CoreBeliefs,
    CounselorPersona,
)
from personae.agents._registry import get_role, register_role, role_names
from personae.agents._teaching import (
    Answer,
    Item,
    Shot,
    Student,
    StudentPersona,
    Teacher,
    TeacherPersona,
    letters,
    read_answer,
)

__all__ = [
    "STYLE_BEHAVIOUR",
    "STYLE_SENTENCE_CAP",
    "Agent",
    "Answer",
    "Client",
    "ClientProfile",
    "ComputerUser",
    "ComputerUserPersona",
    "ConversationStyle",
    "CoreBeliefs",
    "Counselor",
    "CounselorPersona",
    "Facilitator",
    "FacilitatorPersona",
    "Item",
    "LineKind",
    "Participant",
    "ParticipantPersona",
    "Persona",
    "PersonaAgent",
    "Sampling",
    "Shot",
    "Student",
    "StudentPersona",
    "Teacher",
    "TeacherPersona",
    "Utterance",
    "default_label",
    "get_role",
    "letters",
    "read_answer",
    "register_role",
    "role_names",
    "visible_history",
]
