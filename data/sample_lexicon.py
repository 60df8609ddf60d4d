"""The sample corpus's vocabulary: per-language lexicons and the word pools its templates draw from.

Kept apart from `hql_ray.data.sample.generator` (templates, grammar, writer) because it is data, not logic:
each block is `english key | one cell per language`, parsed by `_table` into {key: {lang: cell}}.
"""

from __future__ import annotations

# Lexicons. Germanic nouns carry their gender (m/f/n); Romance ones too, except Haitian, whose tag is
# the postposed determiner (la/a/an/nan). Romance adjectives are "masc/fem"; "<" marks a prenominal one.
_GERMANIC = ("eng", "deu", "ltz", "lim", "nld", "tpi")
_ROMANCE = ("fra", "hat", "ita", "scn", "spa", "ast")
_NOUNS_G = """
boy     | boy     | Junge:m   | Jong:m            | jong:m    | jongen:m | pikinini man
girl    | girl    | Mädchen:n | Meedchen:n        | meidje:n  | meisje:n | pikinini meri
man     | man     | Mann:m    | Mann:m            | man:m     | man:m    | man
woman   | woman   | Frau:f    | Fra:f             | vrouw:f   | vrouw:f  | meri
teacher | teacher | Lehrer:m  | Schoulmeeschter:m | meister:m | leraar:m | tisa
child   | child   | Kind:n    | Kand:n            | kind:n    | kind:n   | pikinini
doctor  | doctor  | Arzt:m    | Dokter:m          | dokter:m  | dokter:m | dokta
friend  | friend  | Freund:m  | Frënd:m           | vrund:m   | vriend:m | pren
cat     | cat     | Katze:f   | Kaz:f             | kat:f     | kat:f    | pusi
dog     | dog     | Hund:m    | Hond:m            | hond:m    | hond:m   | dok
book    | book    | Buch:n    | Buch:n            | boek:n    | boek:n   | buk
apple   | apple   | Apfel:m   | Apel:m            | appel:m   | appel:m  | epol
car     | car     | Auto:n    | Auto:m            | auto:m    | auto:m   | ka
letter  | letter  | Brief:m   | Bréif:m           | breef:m   | brief:m  | pas
bread   | bread   | Brot:n    | Brout:n           | broed:n   | brood:n  | bret
water   | water   | Wasser:n  | Waasser:n         | water:n   | water:n  | wara
ball    | ball    | Ball:m    | Ball:m            | bal:m     | bal:m    | bal
house   | house   | Haus:n    | Haus:n            | hoes:n    | huis:n   | haus
school  | school  | Schule:f  | Schoul:f          | sjaol:f   | school:f | skul
garden  | garden  | Garten:m  | Gaart:m           | gaard:m   | tuin:m   | gaden
forest  | forest  | Wald:m    | Bësch:m           | bos:n     | bos:n    | bus
market  | market  | Markt:m   | Maart:m           | mert:m    | markt:m  | maket
"""
_NOUNS_R = """
boy     | garçon:m     | ti gason:an | ragazzo:m  | picciottu:m   | chico:m   | rapaz:m
girl    | fille:f      | ti fi:a     | ragazza:f  | picciotta:f   | chica:f   | rapaza:f
man     | homme:m      | nonm:nan    | uomo:m     | omu:m         | hombre:m  | home:m
woman   | femme:f      | fanm:nan    | donna:f    | fimmina:f     | mujer:f   | muyer:f
teacher | professeur:m | pwofesè:a   | maestro:m  | mastru:m      | maestro:m | maestru:m
child   | enfant:m     | timoun:nan  | bambino:m  | picciriddu:m  | niño:m    | neñu:m
doctor  | médecin:m    | doktè:a     | medico:m   | medicu:m      | médico:m  | médicu:m
friend  | ami:m        | zanmi:an    | amico:m    | amicu:m       | amigo:m   | amigu:m
cat     | chat:m       | chat:la     | gatto:m    | gattu:m       | gato:m    | gatu:m
dog     | chien:m      | chen:an     | cane:m     | cani:m        | perro:m   | perru:m
book    | livre:m      | liv:la      | libro:m    | libru:m       | libro:m   | llibru:m
apple   | pomme:f      | pòm:nan     | mela:f     | pumu:m        | manzana:f | mazana:f
car     | voiture:f    | machin:nan  | macchina:f | machina:f     | coche:m   | coche:m
letter  | lettre:f     | lèt:la      | lettera:f  | littra:f      | carta:f   | carta:f
bread   | pain:m       | pen:an      | pane:m     | pani:m        | pan:m     | pan:m
water   | eau:f        | dlo:a       | acqua:f    | acqua:f       | agua:m    | agua:f
ball    | ballon:m     | boul:la     | palla:f    | palla:f       | pelota:f  | pelota:f
house   | maison:f     | kay:la      | casa:f     | casa:f        | casa:f    | casa:f
school  | école:f      | lekòl:la    | scuola:f   | scola:f       | escuela:f | escuela:f
garden  | jardin:m     | jaden:an    | giardino:m | jardinu:m     | jardín:m  | xardín:m
forest  | forêt:f      | forè:a      | bosco:m    | boscu:m       | bosque:m  | monte:m
market  | marché:m     | mache:a     | mercato:m  | mircatu:m     | mercado:m | mercáu:m
"""
# Germanic verbs: "3sg/infinitive" (English: "3sg/base"); Tok Pisin and Haitian have one form.
_VERBS_G = """
see-01   | sees/see       | sieht/sehen          | gesäit/gesinn        | zuut/zien         | ziet/zien             | lukim
find-01  | finds/find     | findet/finden        | fënnt/fannen         | vint/vinde        | vindt/vinden          | painim
buy-01   | buys/buy       | kauft/kaufen         | keeft/kafen          | keup/koupe        | koopt/kopen           | baim
eat-01   | eats/eat       | isst/essen           | iesst/iessen         | eet/ete           | eet/eten              | kaikai
read-01  | reads/read     | liest/lesen          | liest/liesen         | leest/leze        | leest/lezen           | ritim
write-01 | writes/write   | schreibt/schreiben   | schreift/schreiwen   | sjrijf/sjrieve    | schrijft/schrijven    | raitim
drink-01 | drinks/drink   | trinkt/trinken       | drénkt/drénken       | drinkt/drinke     | drinkt/drinken        | dringim
carry-01 | carries/carry  | trägt/tragen         | dréit/droen          | dreug/drage       | draagt/dragen         | karim
visit-01 | visits/visit   | besucht/besuchen     | besicht/besichen     | bezeuk/bezeuke    | bezoekt/bezoeken      | visitim
sleep-01 | sleeps/sleep   | schläft/schlafen     | schléift/schlofen    | sleep/slaope      | slaapt/slapen         | slip
sing-01  | sings/sing     | singt/singen         | séngt/sangen         | zingk/zinge       | zingt/zingen          | singsing
work-01  | works/work     | arbeitet/arbeiten    | schafft/schaffen     | wirk/wirke        | werkt/werken          | wok
play-01  | plays/play     | spielt/spielen       | spillt/spillen       | speult/speule     | speelt/spelen         | pilai
live-01  | lives/live     | wohnt/wohnen         | wunnt/wunnen         | waont/waone       | woont/wonen           | stap
"""
_VERBS_R = """
see-01   | voit/voir             | wè     | vede/vedere         | vidi/vidiri             | ve/ver              | ve/ver
find-01  | trouve/trouver        | jwenn  | trova/trovare       | trova/truvari           | encuentra/encontrar | atopa/atopar
buy-01   | achète/acheter        | achte  | compra/comprare     | accatta/accattari       | compra/comprar      | merca/mercar
eat-01   | mange/manger          | manje  | mangia/mangiare     | mancia/manciari         | come/comer          | come/comer
read-01  | lit/lire              | li     | legge/leggere       | leggi/leggiri           | lee/leer            | llee/lleer
write-01 | écrit/écrire          | ekri   | scrive/scrivere     | scrivi/scriviri         | escribe/escribir    | escribe/escribir
drink-01 | boit/boire            | bwè    | beve/bere           | vivi/viviri             | bebe/beber          | bebe/beber
carry-01 | porte/porter          | pote   | porta/portare       | porta/purtari           | lleva/llevar        | lleva/llevar
visit-01 | visite/visiter        | vizite | visita/visitare     | visita/visitari         | visita/visitar      | visita/visitar
sleep-01 | dort/dormir           | dòmi   | dorme/dormire       | dormi/dòrmiri           | duerme/dormir       | duerme/dormir
sing-01  | chante/chanter        | chante | canta/cantare       | canta/cantari           | canta/cantar        | canta/cantar
work-01  | travaille/travailler  | travay | lavora/lavorare     | travagghia/travagghiari | trabaja/trabajar    | trabaya/trabayar
play-01  | joue/jouer            | jwe    | gioca/giocare       | joca/jucari             | juega/jugar         | xuega/xugar
live-01  | habite/habiter        | rete   | abita/abitare       | abita/abitari           | vive/vivir          | vive/vivir
"""
_ADJS_G = """
big   | big   | groß    | grouss  | groete | grote   | bikpela
small | small | klein   | kleng   | kleine | kleine  | liklik
red   | red   | rot     | rout    | roeje  | rode    | retpela
black | black | schwarz | schwaarz| zwarte | zwarte  | blakpela
white | white | weiß    | wäiss   | witte  | witte   | waitpela
"""
_ADJS_R = """
big   | <grand/grande | <gwo    | grande/grande   | granni/granni | grande/grande   | grande/grande
small | <petit/petite | <ti     | piccolo/piccola | nicu/nica     | pequeño/pequeña | pequeñu/pequeña
red   | rouge/rouge   | wouj:la | rosso/rossa     | russu/russa   | rojo/roja       | coloráu/colorada
black | noir/noire    | nwa:a   | nero/nera       | nivuru/nivura | negro/negra     | prietu/prieta
white | blanc/blanche | blan:an | bianco/bianca   | jancu/janca   | blanco/blanca   | blancu/blanca
"""
_CITIES_G = """
Paris     | Paris     | Paris     | Paräis    | Paries    | Parijs    | Paris
Rome      | Rome      | Rom       | Roum      | Roeme     | Rome      | Rom
Berlin    | Berlin    | Berlin    | Berlin    | Berlien   | Berlijn   | Berlin
Madrid    | Madrid    | Madrid    | Madrid    | Madrid    | Madrid    | Madrit
London    | London    | London    | London    | Londe     | Londen    | London
Amsterdam | Amsterdam | Amsterdam | Amsterdam | Amsterdam | Amsterdam | Amsterdam
"""
_CITIES_R = """
Paris     | Paris     | Pari      | Parigi    | Parigi    | París     | París
Rome      | Rome      | Wòm       | Roma      | Roma      | Roma      | Roma
Berlin    | Berlin    | Bèlen     | Berlino   | Berlinu   | Berlín    | Berlín
Madrid    | Madrid    | Madrid    | Madrid    | Madrid    | Madrid    | Madrid
London    | Londres   | Lonn      | Londra    | Londra    | Londres   | Londres
Amsterdam | Amsterdam | Amstèdam  | Amsterdam | Amsterdam | Ámsterdam | Ámsterdam
"""


def _table(*blocks: tuple[str, tuple[str, ...]]) -> dict[str, dict[str, str]]:
    """Parse `key | col | col ...` blocks into {key: {lang: cell}}."""
    out: dict[str, dict[str, str]] = {}
    for text, langs in blocks:
        for row in text.strip().splitlines():
            key, *cells = [c.strip() for c in row.split("|")]
            out.setdefault(key, {}).update(zip(langs, cells, strict=True))
    return out


NOUNS = _table((_NOUNS_G, _GERMANIC), (_NOUNS_R, _ROMANCE))
VERBS = _table((_VERBS_G, _GERMANIC), (_VERBS_R, _ROMANCE))
ADJS = _table((_ADJS_G, _GERMANIC), (_ADJS_R, _ROMANCE))
CITIES = _table((_CITIES_G, _GERMANIC), (_CITIES_R, _ROMANCE))
PERSONS = ("Maria", "Peter", "Anna", "Paul", "Lena", "Jan")

HUMANS = ("boy", "girl", "man", "woman", "teacher", "child", "doctor", "friend")
ANIMALS = ("cat", "dog")
THINGS = ("book", "apple", "car", "letter", "bread", "water", "ball", "house")
PLACES = ("house", "school", "garden", "forest", "market")
ANIMATE = HUMANS + ANIMALS
OBJECTS: dict[str, tuple[str, ...]] = {  # transitive verb -> what it can take as :ARG1
    "see-01": ANIMATE + THINGS, "find-01": ANIMALS + THINGS, "carry-01": THINGS[:-1] + ("cat", "child"),
    "buy-01": THINGS, "eat-01": ("apple", "bread"), "read-01": ("book", "letter"),
    "write-01": ("book", "letter"), "drink-01": ("water",),
}
INTRANSITIVE = ("sleep-01", "sing-01", "work-01", "play-01", "live-01")
HUMAN_ONLY = {"buy-01", "read-01", "write-01", "sing-01", "work-01", "visit-01"}
COLOURS = ("red", "black", "white")
